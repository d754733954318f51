# Helpers shared by scripts/setup_services.sh and scripts/scale/*.sh (sourced, not run).
# The sourcing script sets LOG_NAME first: every line on stderr starts with it.

log() { printf '%s: %s\n' "${LOG_NAME:-jobmon}" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# Poll a command until it succeeds; fail after $1 seconds naming what was awaited.
wait_for() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${timeout}s waiting for $what"
        sleep 0.25
    done
}
