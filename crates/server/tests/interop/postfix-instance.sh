#!/usr/bin/env bash
# A throw-away Postfix instance for sealmail's interoperability tests (root; Debian's postfix).
#
#   postfix-instance.sh start NAME SMTPD_PORT RELAY_DOMAIN RELAY_HOST:PORT [RELAY_DOMAIN RELAY_HOST:PORT ...]
#   postfix-instance.sh stop NAME
#
# `start` runs a separate Postfix (its own config, queue and data folders, named NAME) that
# - listens on 127.0.0.1:SMTPD_PORT with STARTTLS offered (self-signed mail.postfix.test,
#   TLS 1.2+), and delivers mail for carol@postfix.test into the Maildir
#   /var/lib/postfix-NAME-vmail/postfix.test/carol/ (with a Received line naming the TLS used);
# - relays mail for each RELAY_DOMAIN, from 127.0.0.0/8 clients, to its RELAY_HOST:PORT with
#   mandatory TLS (smtp_tls_security_level = encrypt), without DNS; its own DSNs go the same way.
# Its log is /var/log/postfix-NAME.log. `stop` stops it and deletes its folders.
set -euo pipefail

command=$1
name=$2
conf=/etc/postfix-$name
queue=/var/spool/postfix-$name
data=/var/lib/postfix-$name
vmail=/var/lib/postfix-$name-vmail
log=/var/log/postfix-$name.log

if [ "$command" = stop ]; then
  postfix -c "$conf" stop >/dev/null 2>&1 || true
  rm -rf "$conf" "$queue" "$data" "$vmail" "$log"
  if [ -f /etc/postfix/main.cf ]; then
    kept=$(postconf -h alternate_config_directories 2>/dev/null | tr ',' '\n' | sed 's/^ *//' | grep -vx "$conf" | paste -sd, - | sed 's/,/, /g' || true)
    postconf -e "alternate_config_directories = $kept"
  fi
  exit 0
fi

port=$3
shift 3
relay_domains=""
user=sealmail-pftest
id "$user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$user"
uid=$(id -u "$user")
gid=$(id -g "$user")

mkdir -p "$conf" "$queue" "$data" "$vmail"
chown -R "$user:$user" "$vmail"
openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 30 \
  -keyout "$conf/key.pem" -out "$conf/cert.pem" -subj "/CN=mail.postfix.test" \
  -addext "subjectAltName=DNS:mail.postfix.test" 2>/dev/null
chmod 0600 "$conf/key.pem"

printf 'carol@postfix.test postfix.test/carol/\n' > "$conf/vmailbox"
: > "$conf/transport"
while [ $# -ge 2 ]; do
  printf '%s smtp:[%s]:%s\n' "$1" "${2%:*}" "${2##*:}" >> "$conf/transport"
  relay_domains="${relay_domains:+$relay_domains, }$1"
  shift 2
done

cat > "$conf/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $conf
queue_directory = $queue
data_directory = $data
multi_instance_enable = no
maillog_file = $log
syslog_name = postfix-$name
myhostname = mail.postfix.test
mydomain = postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
relay_domains = $relay_domains
transport_maps = texthash:$conf/transport
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = postfix.test
virtual_mailbox_base = $vmail
virtual_mailbox_maps = texthash:$conf/vmailbox
virtual_uid_maps = static:$uid
virtual_gid_maps = static:$gid
virtual_transport = virtual
smtpd_tls_cert_file = $conf/cert.pem
smtpd_tls_key_file = $conf/key.pem
smtpd_tls_security_level = may
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
smtp_tls_security_level = encrypt
smtp_tls_protocols = >=TLSv1.2
smtp_tls_mandatory_protocols = >=TLSv1.2
smtp_tls_loglevel = 1
EOF

cat > "$conf/master.cf" <<EOF
127.0.0.1:$port inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
tlsproxy  unix  -       -       n       -       0       tlsproxy
EOF

# Postfix only runs alternate configuration folders the default one lists.
if [ -f /etc/postfix/main.cf ] && ! postconf -h alternate_config_directories 2>/dev/null | grep -q "$conf"; then
  current=$(postconf -h alternate_config_directories 2>/dev/null || true)
  postconf -e "alternate_config_directories = ${current:+$current, }$conf"
fi
postfix -c "$conf" set-permissions >/dev/null 2>&1 || true
postfix -c "$conf" check
postfix -c "$conf" start </dev/null >/dev/null 2>&1
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && exit 0
  sleep 0.1
done
echo "postfix-$name is not listening on 127.0.0.1:$port" >&2
exit 1
