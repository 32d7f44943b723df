"""fuzz_target: one libFuzzer target per parser.

With --config=fuzz (clang, -fsanitize=fuzzer) the binary is a libFuzzer
fuzzer; `tools/fuzz` runs it. In every other build it links replay_main.cc,
which runs the target once on each file it is given, and a test replays the
real fixtures and the kept regressions through it, so the targets build and
run in every `tools/test`.
"""

def fuzz_target(name, srcs, corpus_glob, deps = []):
    # Inputs that once failed, kept as regressions/<format>-<what>.
    regressions = native.glob(["regressions/%s-*" % name.replace("_fuzzer", "")])
    native.cc_binary(
        name = name,
        srcs = srcs,
        deps = deps + select({
            ":fuzzing": [],
            "//conditions:default": [":replay_main"],
        }),
    )
    native.sh_test(
        name = name + "_replay_test",
        srcs = ["replay_test.sh"],
        args = ["$(location :%s)" % name, corpus_glob] +
               ["$(location %s)" % f for f in regressions],
        data = [":" + name, "//tests/testdata:fixtures"] + regressions,
    )
