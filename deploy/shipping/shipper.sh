#!/bin/sh
# The shipper's entry point: tidies rsyslog's record of how far it read each log file, then
# runs rsyslog in the foreground with rsyslog.conf. The image's ENTRYPOINT; also run as is by
# scripts/shipping-test.sh.
#   api-shipper [rsyslogd options]   ship (-N1: only check the configuration)
#   api-shipper status               for each log file: its size, the offset rsyslog has
#                                    recorded as shipped, and the bytes behind
#
# Environment (defaults in brackets): SHIPPER_LOG_GLOB [/logs/api*.log], SHIPPER_STATE_DIR
# [/var/lib/api-shipper], SHIPPER_MODE [inotify] (see rsyslog.conf), SHIPPER_MAX_LINE [66560]
# (bytes: the longest line shipped whole, at least MAX_BODY_BYTES + 1024), SHIPPER_CONF
# [/etc/api-shipper/rsyslog.conf], PGPASSWORD_FILE (a file holding the password, for
# container secrets), and libpq's PG* variables.
set -eu

: "${SHIPPER_LOG_GLOB:=/logs/api*.log}"
: "${SHIPPER_STATE_DIR:=/var/lib/api-shipper}"
: "${SHIPPER_MODE:=inotify}"
: "${SHIPPER_MAX_LINE:=66560}"
: "${SHIPPER_CONF:=/etc/api-shipper/rsyslog.conf}"
export SHIPPER_LOG_GLOB SHIPPER_STATE_DIR SHIPPER_MODE SHIPPER_MAX_LINE

# state_offset FILE: the offset recorded for FILE (by its inode), or nothing.
state_offset() {
  for s in "$SHIPPER_STATE_DIR/imfile-state:$(stat -c %i -- "$1")" \
    "$SHIPPER_STATE_DIR/imfile-state:$(stat -c %i -- "$1")":*; do
    if [ -f "$s" ]; then sed -n 's/.*"curr_offs": *\([0-9][0-9]*\).*/\1/p' "$s"; return; fi
  done
}

# rsyslog records an offset after the lines before it are committed, so "behind" is at most
# what is still to ship (and exactly that once the shipper is idle).
if [ "${1:-}" = status ]; then
  printf 'file\tbytes\tshipped\tbehind\n'
  for f in $SHIPPER_LOG_GLOB; do
    [ -f "$f" ] || continue
    size=$(stat -c %s -- "$f")
    offset=$(state_offset "$f")
    printf '%s\t%s\t%s\t%s\n' "$f" "$size" "${offset:-0}" "$((size - ${offset:-0}))"
  done
  exit 0
fi

if [ -n "${PGPASSWORD_FILE:-}" ]; then
  PGPASSWORD=$(cat "$PGPASSWORD_FILE")
  export PGPASSWORD
fi

# rsyslog's imfile keeps one state file per log file, named imfile-state:<inode>:<hash of the
# file's first 512 bytes> (imfile-state:<inode> while the file is shorter), holding the
# offset to resume from. Two of them can make it skip lines nobody shipped:
#   - the offset written when a file first reaches 512 bytes: imfile writes it before it
#     hands on the lines it has just read, so a crash right after loses them (the other
#     writes come after the lines are committed). Such an offset lies below 512 plus one
#     line; a state under that bound is dropped and the file is read again from its start:
#     what was shipped already is counted as a redelivery, not stored twice.
#   - a state whose file is gone (deleted while the shipper was down): a new file that gets
#     the same inode would resume from it. Dropped too.
# Without a state file imfile reads a file from its start.
inodes=" "
for f in $SHIPPER_LOG_GLOB; do
  if [ -f "$f" ]; then inodes="$inodes$(stat -c %i -- "$f") "; fi
done
below=$((512 + SHIPPER_MAX_LINE))
for s in "$SHIPPER_STATE_DIR"/imfile-state:*; do
  [ -f "$s" ] || continue
  name=${s##*/imfile-state:}
  inode=${name%%:*}
  offset=$(sed -n 's/.*"curr_offs": *\([0-9][0-9]*\).*/\1/p' "$s")
  case $inodes in
    *" $inode "*) if [ -n "$offset" ] && [ "$offset" -ge "$below" ]; then continue; fi ;;
  esac
  rm -f -- "$s"
done

# Arguments go to rsyslogd: -N1 checks the configuration and exits.
exec rsyslogd -n -iNONE -f "$SHIPPER_CONF" "$@"
