"""Repository rules for the libraries and toolkits installed on the machine.

system_libs: one cc_library per entry, with the flags pkg-config reports
(-D flags become `defines`, so dependents see them; spdlog needs
SPDLOG_COMPILED_LIB and SPDLOG_FMT_EXTERNAL). Headers are in /usr/include.

cuda_toolkit: the CUDA Toolkit's headers at $CUDA_HOME (default
/usr/local/cuda), as @cuda//:headers. Nothing links libcuda: the daemon loads
the driver at run time so it starts on machines without a GPU.
"""

def _system_libs_impl(ctx):
    lines = ['package(default_visibility = ["//visibility:public"])', ""]
    for name in sorted(ctx.attr.libraries.keys()):
        modules = ctx.attr.libraries[name].split(" ")
        result = ctx.execute(["pkg-config", "--cflags", "--libs"] + modules)
        if result.return_code != 0:
            fail("pkg-config %s failed (is its -dev package installed? " % modules +
                 "tools/test installs them): %s" % result.stderr)
        defines = []
        linkopts = []
        for flag in result.stdout.strip().split(" "):
            if not flag:
                continue
            if flag.startswith("-D"):
                defines.append(flag[2:])
            elif flag in ("-I/usr/include", "-I/usr/include/x86_64-linux-gnu",
                          "-I/usr/include/aarch64-linux-gnu"):
                # The compiler's own search path (libcurl names its
                # multiarch directory).
                continue
            elif flag.startswith("-I"):
                fail("pkg-config %s needs include path %s; not supported" % (modules, flag))
            else:
                linkopts.append(flag)
        lines.append("cc_library(")
        lines.append("    name = %r," % name)
        lines.append("    defines = %r," % defines)
        lines.append("    linkopts = %r," % linkopts)
        lines.append(")")
        lines.append("")
    ctx.file("BUILD.bazel", "\n".join(lines))

system_libs = repository_rule(
    implementation = _system_libs_impl,
    attrs = {"libraries": attr.string_dict(mandatory = True)},
    environ = ["PKG_CONFIG_PATH"],
    local = True,
)

def _cuda_toolkit_impl(ctx):
    cuda_home = ctx.os.environ.get("CUDA_HOME", "/usr/local/cuda")
    include = ctx.path(cuda_home + "/include")
    if not include.exists:
        fail("CUDA Toolkit headers not found at %s (set CUDA_HOME)" % include)
    ctx.symlink(include, "include")
    ctx.file("BUILD.bazel", """package(default_visibility = ["//visibility:public"])

cc_library(
    name = "headers",
    hdrs = ["include/cuda.h", "include/cudaTypedefs.h"],
    includes = ["include"],
)
""")

cuda_toolkit = repository_rule(
    implementation = _cuda_toolkit_impl,
    environ = ["CUDA_HOME"],
    local = True,
)
