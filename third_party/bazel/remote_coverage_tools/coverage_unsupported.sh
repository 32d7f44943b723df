#!/bin/sh
echo "coverage is not supported with Debian's Bazel in this workspace" >&2
exit 1
