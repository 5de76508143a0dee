#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ with seed inputs: a few of our own per target, and copies from
# the shared third-party test data (../shared/testdata, see its README.md) where it exists.
# The corpus is git-ignored; run this before fuzzing (scripts/test.sh does).
set -euo pipefail
cd "$(dirname "$0")"
testdata=${SEALMAIL_TESTDATA:-../../shared/testdata}
exec python3 - "$testdata" <<'PY'
import hashlib, os, re, sys
from pathlib import Path

testdata = Path(sys.argv[1])
corpus = Path("corpus")

def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)

def crlf(data):
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

def go_unquote(s):
    out, i = bytearray(), 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out += c.encode(); i += 1; continue
        n = s[i + 1]
        simple = {"n": b"\n", "r": b"\r", "t": b"\t", "\\": b"\\", '"': b'"', "'": b"'", "0": b"\0"}
        if n == "x":
            out.append(int(s[i + 2:i + 4], 16)); i += 4
        elif n == "u":
            out += chr(int(s[i + 2:i + 6], 16)).encode(); i += 6
        else:
            out += simple.get(n, n.encode()); i += 2
    return bytes(out)

# --- Our own seeds --------------------------------------------------------------------
for line in ["EHLO client.example.org", "HELO [192.0.2.1]", "MAIL FROM:<a@example.org> SIZE=100 BODY=8BITMIME",
             "MAIL FROM:<> RET=HDRS ENVID=QQ+2B314", "RCPT TO:<b@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.net",
             "DATA", "BDAT 100 LAST", "BDAT 0", "AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH LOGIN", "RSET", "NOOP x",
             "QUIT", "VRFY a", "STARTTLS", "MAIL FROM:<a@b> REQUIRETLS SMTPUTF8", "RCPT TO:<\"q uoted\"@[IPv6:::1]>"]:
    put("smtp_command", line)
for data in [b"Subject: x\r\n\r\nbody\r\n.\r\n", b".\r\n", b"..a\r\n.\r\nQUIT\r\n", b"a\n.\nb\r\n.\r\n",
             b"a\r\n.\nb\r\n.\r\n", b"a\r.\rb\r\n.\r\n", b"a\0b\r\n.\r\n", b"\x01\x02\x03\x04x\r\n.\r\n"]:
    put("smtp_data", data)
for data in [b"\x02\x00alice\x00secret", b"\x00", b"\x02YWxpY2UAc2VjcmV0\n", b"\x01\nYWxpY2U=\nc2VjcmV0",
             b"\x00\nAGFsaWNlAHNlY3JldA==", b"\x03YWxpY2U=\nc2VjcmV0\nx"]:
    put("sasl", data)
for data in [b"\x00n,,n=user,r=rOprNGfwEbeRWgbNEkqO\nc=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
             b"\x01p=tls-exporter,,n=a@b.test,r=abc\nc=cD10bHMtZXhwb3J0ZXIsLAcHBwc=,r=abc,p=AAAA",
             b"\x01p=tls-server-end-point,a=x@y.test,n=x@y.test,r=n\n", b"\x02y,,n=u,r=r\n", b"\x00n,,n==2C=3D,r=r,m=x\n"]:
    put("scram", data)
for cmd in ["a1 LIST \"\" \"*\"\r\n", "a2 LIST (SUBSCRIBED) \"\" (\"INBOX*\" \"%\") RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n",
            "a3 FETCH 1:*,7 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY[1.2.MIME] BODYSTRUCTURE)\r\n",
            "a4 UID STORE 2:4 +FLAGS.SILENT (\\Seen)\r\n", "a5 SELECT &AOk-t&AOk-\r\n", "a6 LOGIN {5}\r\nalice {6+}\r\nsecret\r\n",
            "a7 UID MOVE 4294967295:1 Trash\r\n", "a8 RENAME a b\r\n", "a9 LSUB \"\" %\r\n", "b1 APPEND INBOX (\\Seen) {3+}\r\nabc\r\n",
            "b2 SEARCH CHARSET UTF-8 OR UNSEEN SUBJECT x UID 1:*\r\n", "b3 STATUS INBOX (MESSAGES UIDNEXT)\r\n", "b4 AUTHENTICATE PLAIN\r\n",
            "b5 LIST \"\" ((((((x))))))\r\n", "b6 COPY 1,2,3 \"Sent Items\"\r\n", "b7 ENABLE QRESYNC\r\n"]:
    put("imap_command", cmd)
for pattern_name in [b"*\0a/b/c", b"%/%\0a/b", b"a*b%c\0axxbyc", b"INBOX*\0INBOX.x", b"*%*%\0///"]:
    put("imap_command", pattern_name)
for name in ["INBOX", "&AOk-t&AOk-", "&-", "a&-b", "&ZeVnLIqe-", "&2D3eAA-", "Sent Items", "&AGE-", "&Jjo-!", "&U,BTFw-"]:
    put("imap_mutf7", name)
sig = b"\r\n\r\n\x00\r\nQUIT\n"
for data in [b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 25\r\n", b"PROXY TCP6 2001:db8::1 2001:db8::2 4 5\r\n",
             b"PROXY UNKNOWN\r\n", sig + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 1, 0, 25, 0, 26]),
             sig + b"\x20\x00\x00\x00", sig + b"\x21\x21\x00\x24" + bytes(range(36)),
             b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 1, 0, 25, 0, 26])]:
    put("proxy", data)
for data in ["220 mx.example.org ESMTP\r\n", "250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250 DSN\r\n",
             "354 go\r\n250 2.0.0 OK queued\r\n", "550-5.1.1 no\r\n550 5.1.1 such user\r\n", "421\n", "250-x\r\n251 y\r\n"]:
    put("smtp_reply", data)
for data in ["v=spf1 ip4:192.0.2.0/24 include:_spf.example.org ~all", "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
             "v=DMARC1; p=reject; rua=mailto:d@example.org; pct=50; sp=none; adkim=s", "v=STSv1; id=20190429T010101",
             "v=TLSRPTv1; rua=mailto:tls@example.org,https://r.example.org/v1", "version: STSv1\r\nmode: enforce\r\nmx: *.example.org\r\nmax_age: 86400\r\n",
             "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} redirect=_spf.example.org"]:
    put("dns_txt", data)
for data in ["QQ+2B314", "a+2Bb+3Dc", "rfc822;user+40example.org", "user@example.org", "\"a b\"@[192.0.2.1]",
             "line\r\nnext", "Subject: x\r\n\r\nbody\r\n", "b\u00fccher.example", "xn--bcher-kva.example"]:
    put("xtext_line", data)
put("mime_fetch", b"Subject: hi\r\n\r\nbody\r\n")
# imap_framing: a stage byte (even: before login, odd: after), then the client's bytes.
for stage in [b"\x00", b"\x01"]:
    for session in [b"a1 LOGIN {5}\r\nalice {6}\r\nsecret\r\na2 NOOP\r\n", b"b1 APPEND INBOX (\\Seen) {3+}\r\nabc\r\n",
                    b"c1 APPEND INBOX {20}\r\nSubject: x\r\n\r\nbody\r\n\r\nc2 LOGOUT\r\n", b"d1 LOGIN {99999}\r\n",
                    b"e1 SEARCH TEXT {2+}\r\nab TEXT {2+}\r\ncd TEXT {2+}\r\nef TEXT {2+}\r\ngh TEXT {2+}\r\nij\r\n",
                    b"f1 NOOP\nf2 NOOP\r\n" + b"x" * 300 + b"\r\nf3 NOOP\r\n", b"+ {1}\r\n\r\n"]:
        put("imap_framing", stage + session)
# spf_eval: a client-address byte, then records separated by newlines.
for records in [b"v=spf1 ip4:192.0.2.0/24 -all", b"v=spf1 include:a.example.org ~all\nv=spf1 a mx -all",
                b"v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} redirect=_spf.example.org\nv=spf1 ptr ?all",
                b"v=spf1 -all exp=explain.%{d}\nSee %{i} %{s} %{h} %{p} for why",
                b"v=spf1 include:x include:y include:z\nv=spf1 include:example.org\nv=spf1 redirect=q"]:
    for first in [b"\x00", b"\x01", b"\x02"]:
        put("spf_eval", first + records)
# smtp_bdat: a chunk count byte, then per chunk a 16-bit little-endian size and a keep flag,
# then the octets on the wire.
def bdat(chunks, wire):
    header = bytes([len(chunks) - 1]) + b"".join(n.to_bytes(2, "little") + bytes([keep]) for n, keep in chunks)
    put("smtp_bdat", header + wire)
bdat([(20, 1)], b"Subject: x\r\n\r\nbody\r\nQUIT\r\n")
bdat([(9, 1), (11, 1)], b"Subject: x\r\r\nbody\r\n")
bdat([(3000, 1), (5000, 1), (10, 0)], b"a" * 8010 + b"BDAT 1 LAST\r\n")
bdat([(4, 1), (100, 1)], b"ab\0\n")

# --- Third-party seeds from the shared test data ----------------------------------------
if not testdata.is_dir():
    print(f"seed.sh: {testdata} not found; only our own seeds", file=sys.stderr)
    sys.exit(0)
# chasquid's SMTP fuzz seeds: the raw client input of a session.
for f in sorted((testdata / "chasquid/internal/smtpsrv/testdata/fuzz/FuzzConnection").glob("*")):
    m = re.search(r'\[\]byte\("(.*)"\)', f.read_text(errors="replace"))
    if m:
        raw = go_unquote(m.group(1))
        put("smtp_data", crlf(raw))
        for line in raw.split(b"\n")[:40]:
            put("smtp_command", line.rstrip(b"\r"))
# chasquid's SMTP dialogs: client lines are commands; the whole client side is DATA input.
for f in sorted((testdata / "chasquid/test").rglob("*.cmy")):
    sent = [l[5:] for l in f.read_text(errors="replace").splitlines() if l.startswith("c -> ")]
    for line in sent[:6]:
        put("smtp_command", line)
    put("smtp_data", "\r\n".join(sent) + "\r\n")
    replies = [l[5:] for l in f.read_text(errors="replace").splitlines() if l.startswith(("c <- ", "c <~ "))]
    if replies:
        put("smtp_reply", "\r\n".join(replies) + "\r\n")
# Messages: MIME trees for FETCH, and DATA payloads.
messages = sorted((testdata / "mail-parser/resources/eml").rglob("*.eml"))
messages += sorted(p for p in (testdata / "mimekit").rglob("*") if p.suffix in (".eml", ".txt", ".msg") and p.stat().st_size < 200_000)
for f in messages:
    data = f.read_bytes()
    put("mime_fetch", data)
for f in messages[:40]:
    put("smtp_data", crlf(f.read_bytes()) + b".\r\n")
# TXT records: DKIM keys of mail-auth's vectors and chasquid's zone files, SPF records, the
# fake DNS of Mail::DKIM, the ARC suite's keys.
for f in sorted((testdata / "mail-auth/resources").glob("*/*.txt")):
    head = f.read_bytes().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    for line in head.split(b"\n"):
        parts = line.split(None, 1)
        if len(parts) == 2:
            put("dns_txt", parts[1])
for f in sorted((testdata / "chasquid/internal/dkim/testdata").glob("*.dns")):
    for record in re.split(r"\n(?=\S)", f.read_text(errors="replace").replace("\\\n", " ")):
        if ":" in record:
            put("dns_txt", " ".join(record.split(":", 1)[1].split()))
for f in sorted((testdata / "mail-auth/resources/spf").glob("*")):
    for value in re.findall(r"(v=spf1[^\n']*)", f.read_text(errors="replace"))[:20]:
        put("dns_txt", value.strip().strip('"'))
# The RFC 7208 suite's records, each scenario's together (its first record first), for spf_eval.
suite = testdata / "spf-rfc7208/rfc7208-tests.yml"
if suite.exists():
    for scenario in suite.read_text(errors="replace").split("\n---"):
        records = [r.strip().strip('"').strip("'") for r in re.findall(r"(v=spf1[^\n]*)", scenario)]
        if records:
            put("spf_eval", b"\x00" + "\n".join(records[:16]).encode())
fake = testdata / "mail-dkim-perl/t/FAKE_DNS.dat"
if fake.exists():
    for line in fake.read_text(errors="replace").splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and not line.startswith("#"):
            put("dns_txt", parts[1])
for value in re.findall(r"v=DKIM1[^\"\n]*", (testdata / "arc-test-suite/arc-draft-validation-tests.yml").read_text(errors="replace"))[:30]:
    put("dns_txt", value)
for target in sorted(os.listdir(corpus)):
    print(f"{target}: {len(os.listdir(corpus / target))} seeds")
PY
