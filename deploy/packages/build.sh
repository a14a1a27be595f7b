#!/usr/bin/env bash
# Builds the three .deb packages (bluegreen-agent, bluegreen-lb-sidecar, bluegreen-coordinator)
# into target/debian/ with cargo-deb (installed from crates.io when missing).
#
#   deploy/packages/build.sh            release build (what you ship)
#   PROFILE=dev deploy/packages/build.sh  from the debug build (CI checks the packaging, not
#                                        the optimizer; cargo-deb warns that dev is unusual)
#   BLUEGREEN_PACKAGES_PREBUILT=1         pack the binaries already in target/ (deploy/test.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
profile="${PROFILE:-release}"
if ! command -v cargo-deb >/dev/null; then
    echo "build.sh: installing cargo-deb"
    cargo install --locked cargo-deb --version 3.8.0
fi
dir=release
[ "$profile" = dev ] && dir=debug
bin="target/$dir"
if [ "${BLUEGREEN_PACKAGES_PREBUILT:-0}" = 1 ]; then
    # deploy/test.sh built every target already; building these alone would compile the
    # dependencies again with another feature set.
    for b in agent lb-sidecar coordinator man-pages; do
        [ -x "$bin/$b" ] || { echo "build.sh: $bin/$b missing (BLUEGREEN_PACKAGES_PREBUILT=1)" >&2; exit 1; }
    done
else
    cargo build --profile "$profile" --bins -p agent -p lb-sidecar -p coordinator
    cargo build --profile "$profile" -p bluegreen-tests --bin man-pages
fi
# Man pages and completions come from the binaries' own command-line definitions.
mkdir -p target/packaging
"$bin/man-pages" target/packaging >/dev/null
for page in agent lb-sidecar coordinator; do
    gzip -9nf "target/packaging/$page.1"
done
"$bin/coordinator" completions bash > target/packaging/coordinator.bash
"$bin/coordinator" completions zsh > target/packaging/_coordinator
"$bin/coordinator" completions fish > target/packaging/coordinator.fish
for crate in agent lb-sidecar coordinator; do
    cargo deb --no-build --profile "$profile" -p "$crate" --output target/debian/
done
ls -l target/debian/*.deb
