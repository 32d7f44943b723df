"""C++ code for a .proto with gRPC services, from Debian's protoc and plugin.

Bazel's own proto rules would need protobuf's sources, which Debian does not
install; a genrule running /usr/bin/protoc keeps the build offline.
"""

def grpc_cc_proto(name, src):
    base = src[:-len(".proto")]
    outs = [base + ext for ext in [".pb.cc", ".pb.h", ".grpc.pb.cc", ".grpc.pb.h"]]
    native.genrule(
        name = name + "_gen",
        srcs = [src],
        outs = outs,
        cmd = "/usr/bin/protoc --proto_path=. " +
              "--cpp_out=$(GENDIR) --grpc_out=$(GENDIR) " +
              "--plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin " +
              "$(location %s)" % src,
    )
    native.cc_library(
        name = name,
        srcs = [base + ".pb.cc", base + ".grpc.pb.cc"],
        hdrs = [base + ".pb.h", base + ".grpc.pb.h"],
        deps = ["@system//:grpc", "@system//:protobuf"],
    )
