// The release version and the gRPC protocol version.
#ifndef WARMSTART_COMMON_VERSION_H_
#define WARMSTART_COMMON_VERSION_H_

namespace warmstart {

inline constexpr char kVersion[] = "0.1.0";

// Clients refuse a daemon whose protocol major version differs from theirs.
inline constexpr int kProtocolMajor = 1;
inline constexpr int kProtocolMinor = 0;

}  // namespace warmstart

#endif  // WARMSTART_COMMON_VERSION_H_
