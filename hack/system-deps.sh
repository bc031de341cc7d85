#!/usr/bin/env bash
# Debian packages the tests and benchmarks use: Postfix (smtp-sink, smtp-source and a relay
# for the benchmarks), swaks and msmtp (real SMTP clients), wrk (HTTP load generator).
# Installs only what is missing, so a warm machine spends no time here.
set -euo pipefail
need=()
command -v smtp-sink >/dev/null 2>&1 || [ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
perl -MNet::SSLeay -e1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl)  # swaks --tls (a Recommends, skipped below)
command -v msmtp >/dev/null 2>&1 || need+=(msmtp)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)  # the `mailgate dev` banner's curl line is run by a test
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
