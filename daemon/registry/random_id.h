// Unguessable identifiers for sessions and leases.
#ifndef WARMSTART_DAEMON_REGISTRY_RANDOM_ID_H_
#define WARMSTART_DAEMON_REGISTRY_RANDOM_ID_H_

#include <string>

namespace warmstart {

// 128 bits from the kernel's CSPRNG (getrandom), as 32 lower-case hex
// digits. A session id is a bearer token on the gRPC socket, so it must not
// be guessable by another client. Thread-safe.
std::string RandomId();

}  // namespace warmstart

#endif  // WARMSTART_DAEMON_REGISTRY_RANDOM_ID_H_
