# Helpers for the tests of the service behind nginx: verify for scripts/swarm-test.sh and
# scripts/lb-test.sh; retries for those and scripts/multinode-test.sh, which has a verifier of
# its own (scripts/multinode/verify.py). Source it after scripts/lib.sh:
#   . "$(dirname "${BASH_SOURCE[0]}")/lb/lib.sh"
# shellcheck shell=bash

# verify SUMMARY LOG_DIR TAG CLIENT LABEL: scripts/lb/verify.py's checks, counted as ours.
verify() {
  verdicts < <(python3 "$(dirname "${BASH_SOURCE[0]}")/verify.py" "$1" "$2" --tag "$3" --client "$4" \
    --label "$5" 2>&1 || echo "FAIL $5: verify.py failed")
}

# retries <NGINX_LOG: "N (n1 why1; n2 why2)", the attempts nginx gave up on by cause (each
# is an [error] line, and nginx then sends the request to another replica); "0" if none.
retries() {
  grep -o '([0-9]*: [^)]*) while [a-z ]*upstream\|upstream prematurely closed [a-z ]* while [a-z ]*upstream' |
    sort | uniq -c | sort -rn |
    awk '{n = $1; $1 = ""; total += n; why = why (why ? ";" : "") " " n $0} END {print total ? total " (" substr(why, 2) ")" : 0}'
}
