# Shared by the launch/tpu scripts (sourced, not run).
# shellcheck shell=bash
# die MESSAGE: one `error:` line on stderr, exit status 2 (fix the input and
# rerun), as every mi_ssl_jax command does.
die() {
  echo "error: $*" >&2
  exit 2
}

# need VAR...: each variable must be set and non-empty.
need() {
  local var
  for var in "$@"; do
    [[ -n "${!var:-}" ]] \
      || die "set $var (launch/README.md, \"Cloud TPU VM slices\")"
  done
}
