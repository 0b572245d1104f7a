#!/usr/bin/env bash
# Install detbench (editable, with the given extras) into the current Python environment without
# replacing what that environment already has: the packages of its TensorFlow stack (TensorFlow,
# NumPy, protobuf, Keras, TensorRT, ...) are pinned to the versions installed now, so pip can add
# what detbench needs around them but cannot swap them. NVIDIA's container is the case in point.
#
#   docker/install.sh [EXTRA ...]        e.g. docker/install.sh dev
#
# The Dockerfile runs it at build time; tests/test_docker.py runs the same file in a scratch venv.
# Never pass the tf / tf-cpu extras: TensorFlow comes from the environment (refused below).
#
# Environment:
#   PYTHON                 the interpreter to install into (default: python3)
#   DETBENCH_CONSTRAINTS   where the constraints file goes (default: /tmp/constraints.txt)
#   DETBENCH_PIN           extended regex of the package names to pin, matched case-insensitively
#                          against the whole name (default: the TensorFlow stack below; '.*' pins
#                          every installed package)
#   DETBENCH_PIN_REQUIRES  1 (default): pin what those packages require directly as well; 0: not
#   DETBENCH_PIP_ARGS      more `pip install` arguments (split on spaces)
#   DETBENCH_PIP_CHECK     strict (default): fail when `pip check` reports a problem it did not
#                          report before the install; warn: print it and go on
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(dirname "$here")"
python="${PYTHON:-python3}"
constraints="${DETBENCH_CONSTRAINTS:-/tmp/constraints.txt}"
default_pin='tensorflow([-_].*)?|tf[-_]keras|keras|tensorrt([-_].*)?|tensorboard([-_].*)?|numpy'
default_pin+='|protobuf|ml[-_]dtypes|h5py|jax|jaxlib|horovod|cupy([-_].*)?|nvidia[-_]dali([-_].*)?'
default_pin+='|nvidia[-_].*[-_]cu[0-9]+'
pin="${DETBENCH_PIN:-$default_pin}"
pin_deps="${DETBENCH_PIN_REQUIRES:-1}"
check="${DETBENCH_PIP_CHECK:-strict}"

say() { echo "install.sh: $*" >&2; }
pip() { "$python" -m pip --disable-pip-version-check "$@"; }

for extra in "$@"; do
  case "$extra" in
    tf | tf-cpu)
      say "refusing the '$extra' extra: TensorFlow comes from the environment (the image)"
      exit 2 ;;
  esac
done
extras="$(IFS=,; echo "$*")"
target="$project"
if [ -n "$extras" ]; then target="${project}[${extras}]"; fi

# 1. The constraints: the installed packages whose names match the pin regex and the packages
#    they require directly (what TensorFlow imports), each at its installed version.
freeze="$(pip list --format=freeze --exclude-editable)"
seeds="$(grep -iE "^($pin)==" <<<"$freeze" | cut -d= -f1 || true)"
requires=""
if [ -n "$seeds" ] && [ "$pin_deps" = 1 ]; then
  # shellcheck disable=SC2086  # one argument per package name
  requires="$(pip show $seeds 2>/dev/null | sed -n 's/^Requires://p' | tr ',' '\n' | tr -d ' ')"
fi
normalize() { tr 'A-Z_.' 'a-z--' | grep -v '^$' | sort -u; }
awk -F'==' 'NR == FNR { want[$1] = 1; next }
            { name = tolower($1); gsub(/[-_.]+/, "-", name); if (name in want) print }' \
  <(printf '%s\n%s\n' "$seeds" "$requires" | normalize) <(printf '%s\n' "$freeze") >"$constraints"
say "pinning $(wc -l <"$constraints") installed packages ($constraints):"
sed 's/^/  /' "$constraints" >&2
problems_before="$(pip check 2>&1 || true)"

# 2. The install: detbench and what it needs, within the constraints.
# shellcheck disable=SC2086  # DETBENCH_PIP_ARGS is a list of words on purpose
pip install ${DETBENCH_PIP_ARGS:-} -c "$constraints" -e "$target"

# 3. The proof: every pinned package is still there at its version...
installed="$(pip list --format=freeze --exclude-editable)"
changed=0
while IFS= read -r line; do
  if ! grep -qixF "$line" <<<"$installed"; then
    say "changed: $line is now $(grep -iE "^${line%%==*}==" <<<"$installed" || echo 'gone')"
    changed=1
  fi
done <"$constraints"
if [ "$changed" -ne 0 ]; then say "the install replaced pinned packages"; exit 1; fi

# ...and the install broke no requirement that was whole before.
problems_after="$(pip check 2>&1 || true)"
new="$(comm -13 <(sort <<<"$problems_before") <(sort <<<"$problems_after") \
       | grep -v '^No broken requirements found' || true)"
if [ -n "$new" ]; then
  say "pip check reports problems the environment did not have before:"
  while IFS= read -r line; do say "  $line"; done <<<"$new"
  if [ "$check" != "warn" ]; then exit 1; fi
fi
say "installed $target; $(wc -l <"$constraints") pinned packages unchanged"
