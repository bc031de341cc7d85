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
command -v saslpasswd2 >/dev/null 2>&1 || need+=(sasl2-bin)  # bench.smtp_ingress: Postfix with SMTP AUTH (Cyrus SASL)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)  # prometheus + promtool: tests/prometheus, the alert rules
command -v podman >/dev/null 2>&1 || need+=(podman)  # tests/image builds and runs the Dockerfile (hack/image-base.sh)
command -v runc >/dev/null 2>&1 || need+=(runc)  # podman's default crun fails on these hosts' hybrid cgroups
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)  # the image's Python base
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)  # tests/queue: initdb + postgres, off PATH
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${need[*]}"
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if [[ " ${need[*]} " == *" prometheus "* ]]; then
  # The package enables a system Prometheus on :9090 (started where an init system runs services);
  # the tests start their own on free ports, so the system one is stopped and disabled.
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  else
    $SUDO update-rc.d prometheus disable >/dev/null 2>&1 || true
    $SUDO /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
fi
if [[ " ${need[*]} " == *" postgresql "* ]]; then
  # The package creates a system cluster and starts it on :5432 where an init system runs services;
  # the tests initdb their own into temporary directories on free ports, so the system one is stopped and disabled.
  if [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now postgresql >/dev/null 2>&1 || true
  else
    $SUDO update-rc.d postgresql disable >/dev/null 2>&1 || true
    $SUDO /etc/init.d/postgresql stop >/dev/null 2>&1 || true
  fi
fi
