#!/usr/bin/env bash
# Builds the release binary statically linked (glibc's crt-static) for
# x86_64-unknown-linux-gnu and checks it: `ldd`/`file` must say it is static,
# and it must run (`--version`, `check-config` on the repo's config.toml).
# Exits non-zero on any failure. The binary ends up in
# ${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/ (a target
# triple directory of its own, so it never mixes with the normal build).
set -euo pipefail
cd "$(dirname "$0")/.."

triple=x86_64-unknown-linux-gnu
target_dir=${CARGO_TARGET_DIR:-target}
bin=$target_dir/$triple/release/notification-reconciler

fail() { echo "build-static: $*" >&2; exit 1; }

echo "build-static: cargo build --release --target $triple (crt-static)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple"

[ -x "$bin" ] || fail "no binary at $bin"

ldd_out=$(ldd "$bin" 2>&1 || true)
case $ldd_out in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) fail "$bin is dynamically linked; ldd says: $ldd_out" ;;
esac
if command -v file >/dev/null; then
    file_out=$(file -b "$bin")
    case $file_out in
        *"statically linked"* | *"static-pie linked"*) ;;
        *) fail "$bin is not static; file says: $file_out" ;;
    esac
fi

version=$("$bin" --version) || fail "$bin --version failed"
# check-config must not pick up a DATABASE_URL from the caller's environment.
env -u DATABASE_URL "$bin" --config config.toml check-config >/dev/null \
    || fail "$bin check-config on config.toml failed"

echo "build-static: ok: $bin ($version, $(du -h "$bin" | cut -f1), static: ${file_out:-$ldd_out})"
