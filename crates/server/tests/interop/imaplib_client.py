"""An independent IMAP client (Python's imaplib) against a running sealmail quickstart.

Driven by tests/imap.rs. Alice submits messages over SMTP (smtplib); Bob reads them over IMAP
and every response is checked here. Each message fetched with BODY.PEEK[] is written to
$OUT_DIR/fetched-NAME.eml and each message sent to $OUT_DIR/sent-NAME.eml, so the Rust side
can compare them with the store byte for byte.
"""

import imaplib
import os
import re
import smtplib
import ssl
import sys
import time
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

HOST = "127.0.0.1"
IMAP_TLS = int(os.environ["IMAP_TLS_PORT"])
IMAP_STARTTLS = int(os.environ["IMAP_STARTTLS_PORT"])
SUBMISSION_TLS = int(os.environ["SUBMISSION_TLS_PORT"])
OUT = os.environ["OUT_DIR"]
ALICE, BOB = "alice@example.test", "bob@example.test"
PASSWORDS = {ALICE: os.environ["ALICE_PASSWORD"], BOB: os.environ["BOB_PASSWORD"]}

context = ssl.create_default_context(cafile=os.environ["CA_FILE"])
context.minimum_version = ssl.TLSVersion.TLSv1_2


def check(condition, what):
    if not condition:
        sys.exit(f"FAILED: {what}")


def ok(result, what):
    typ, data = result
    check(typ == "OK", f"{what}: {typ} {data}")
    return data


def save(name, data):
    with open(os.path.join(OUT, name + ".eml"), "wb") as f:
        f.write(data)
    return data


# 1. STARTTLS port: no login before TLS, then STARTTLS and login.
plain = imaplib.IMAP4(HOST, IMAP_STARTTLS)
check("LOGINDISABLED" in plain.capabilities and "STARTTLS" in plain.capabilities, plain.capabilities)
# imaplib itself refuses LOGIN under LOGINDISABLED; send it anyway, as a careless client would.
typ, data = plain._simple_command("LOGIN", BOB, '"' + PASSWORDS[BOB] + '"')
check(typ == "NO" and b"PRIVACYREQUIRED" in data[0], f"LOGIN before TLS: {typ} {data}")
ok(plain.starttls(ssl_context=context), "STARTTLS")
check("LOGINDISABLED" not in plain.capabilities and "AUTH=PLAIN" in plain.capabilities, plain.capabilities)
ok(plain.login(BOB, PASSWORDS[BOB]), "LOGIN after STARTTLS")
check(plain.logout()[0] == "BYE", "LOGOUT")

# 2. Alice submits an 8-bit multipart message, a large one and a plain one to Bob.
multipart = EmailMessage(policy=SMTP_POLICY)
multipart["From"] = "Alice Ärger <alice@example.test>"
multipart["To"] = BOB
multipart["Subject"] = "Multipart Grüße"
multipart.set_content("Hallo Bob,\nein Gruß aus Köln.\n", charset="utf-8", cte="8bit")
multipart.add_attachment(bytes(range(256)) * 64, maintype="application", subtype="octet-stream", filename="data.bin")
large = EmailMessage(policy=SMTP_POLICY)
large["From"], large["To"], large["Subject"] = ALICE, BOB, "Large"
large.set_content(("x" * 998 + "\n") * 2000)
small = EmailMessage(policy=SMTP_POLICY)
small["From"], small["To"], small["Subject"] = ALICE, BOB, "Small one"
small.set_content("needle in a haystack\n")
with smtplib.SMTP_SSL(HOST, SUBMISSION_TLS, context=context) as s:
    s.login(ALICE, PASSWORDS[ALICE])
    for name, message in [("multipart", multipart), ("large", large), ("small", small)]:
        s.sendmail(ALICE, [BOB], save("sent-" + name, message.as_bytes()))

# 3. Bob reads them over implicit TLS with AUTHENTICATE PLAIN.
m = imaplib.IMAP4_SSL(HOST, IMAP_TLS, ssl_context=context)
ok(m.authenticate("PLAIN", lambda _: f"\0{BOB}\0{PASSWORDS[BOB]}".encode()), "AUTHENTICATE PLAIN")
for capability in ["IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "LITERAL+", "CONDSTORE", "NAMESPACE", "ID", "ENABLE"]:
    check(capability in m.capabilities or capability in str(m.untagged_responses), f"capability {capability}")
caps = ok(m.capability(), "CAPABILITY")[0].decode()
for capability in ["IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "LITERAL+", "CONDSTORE", "UNSELECT", "CHILDREN", "LIST-STATUS"]:
    check(capability in caps.split(), f"capability {capability} in {caps}")

listing = [line.decode() for line in ok(m.list(), "LIST")]
for name, attribute in [("INBOX", None), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Junk", "\\Junk")]:
    found = [line for line in listing if line.endswith(f'"{name}"')]
    check(found, f"{name} in LIST {listing}")
    if attribute:
        check(attribute in found[0], f"{attribute} on {name}: {found[0]}")

count = int(ok(m.select("INBOX"), "SELECT")[0])
deadline = time.time() + 10
while count < 3 and time.time() < deadline:
    m.noop()
    count = int(m.select("INBOX")[1][0])
check(count == 3, f"3 messages in INBOX, got {count}")
check(m.untagged_responses.get("UIDVALIDITY"), "UIDVALIDITY after SELECT")

# BODY.PEEK[] is exact and does not set \Seen; BODY[] does.
typ, data = m.uid("FETCH", "1:*", "(UID BODY.PEEK[] FLAGS)")
check(typ == "OK", f"UID FETCH: {typ}")
bodies = [part for part in data if isinstance(part, tuple)]
check(len(bodies) == 3, f"3 bodies, got {len(bodies)}")
for (meta, body), name in zip(bodies, ["multipart", "large", "small"]):
    save("fetched-" + name, body)
    check(b"\\Seen" not in meta, f"PEEK left {name} unseen: {meta}")
    sent = open(os.path.join(OUT, "sent-" + name + ".eml"), "rb").read()
    check(body.endswith(sent), f"{name}: fetched body ends with the bytes sent")
data = ok(m.fetch("3", "(BODY[TEXT])"), "FETCH BODY[TEXT]")
check(data[0][1] == b"needle in a haystack\r\n", f"BODY[TEXT] {data[0]}")
flags = ok(m.fetch("3", "(FLAGS)"), "FETCH FLAGS")[0].decode()
check("\\Seen" in flags, f"BODY[] set \\Seen: {flags}")

# ENVELOPE and BODYSTRUCTURE of the multipart message.
meta = ok(m.fetch("1", "(ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE)"), "FETCH ENVELOPE")[0].decode()
check('"Multipart =?utf-8?' in meta or '"=?utf-8?' in meta, f"raw (encoded) subject in ENVELOPE: {meta}")
check('(NIL NIL "bob" "example.test")' in meta, f"To in ENVELOPE: {meta}")
check('"=?utf-8?b?' in meta.lower() or "alice" in meta, f"From in ENVELOPE: {meta}")
check('("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "8BIT"' in meta, f"text part in BODYSTRUCTURE: {meta}")
check('"APPLICATION" "OCTET-STREAM"' in meta and '"MIXED"' in meta, f"attachment in BODYSTRUCTURE: {meta}")
size = int(re.search(r"RFC822\.SIZE (\d+)", meta).group(1))
check(size == len(open(os.path.join(OUT, "fetched-multipart.eml"), "rb").read()), "RFC822.SIZE is the stored size")
part = ok(m.fetch("1", "(BODY.PEEK[1])"), "FETCH BODY[1]")[0][1]
check(part == "Hallo Bob,\r\nein Gruß aus Köln.\r\n".encode(), f"BODY[1] {part!r}")
partial = ok(m.fetch("1", "(BODY.PEEK[1]<6.3>)"), "FETCH partial")[0]
check(partial[1] == b"Bob" and b"BODY[1]<6>" in partial[0], f"partial fetch {partial}")

# SEARCH: keys over flags, headers, size and body; a UTF-8 string as a literal.
check(ok(m.search(None, "ALL"), "SEARCH ALL")[0] == b"1 2 3", "SEARCH ALL")
check(ok(m.search(None, "SEEN"), "SEARCH SEEN")[0] == b"3", "SEARCH SEEN")
check(ok(m.search(None, "LARGER", "1000000"), "SEARCH LARGER")[0] == b"2", "SEARCH LARGER")
check(ok(m.search(None, "SUBJECT", '"small"'), "SEARCH SUBJECT")[0] == b"3", "SEARCH SUBJECT")
check(ok(m.search(None, "NOT", "FROM", "alice"), "SEARCH NOT FROM")[0] == b"", "SEARCH NOT FROM")
check(ok(m.search(None, "OR", "BODY", "needle", "LARGER", "1000000"), "SEARCH OR")[0] == b"2 3", "SEARCH OR")
m.literal = "Köln".encode()
check(ok(m.search("UTF-8", "BODY"), "SEARCH UTF-8 literal")[0] == b"1", "SEARCH BODY Köln")
check(ok(m.uid("SEARCH", "UID", "2:*"), "UID SEARCH")[0] == b"2 3", "UID SEARCH")
typ, data = m.search("KOI8-R", "ALL")
check(typ == "NO" and b"BADCHARSET" in data[0], f"unknown charset: {typ} {data}")

# STORE, and flags read back.
data = ok(m.store("1:2", "+FLAGS", "(\\Flagged $Important)"), "STORE +FLAGS")
check(len(data) == 2 and b"\\Flagged $Important" in data[0], f"STORE reply {data}")
check(ok(m.search(None, "FLAGGED", "KEYWORD", "$Important"), "SEARCH FLAGGED")[0] == b"1 2", "SEARCH FLAGGED")
ok(m.store("2", "-FLAGS.SILENT", "(\\Flagged)"), "STORE -FLAGS.SILENT")
check(ok(m.search(None, "UNFLAGGED"), "SEARCH UNFLAGGED")[0] == b"2 3", "SEARCH UNFLAGGED")

# Mailbox management.
ok(m.create("Archive/2026"), "CREATE nested")
listing = [line.decode() for line in ok(m.list('""', "Archive*"), "LIST Archive*")]
check(any("\\HasChildren" in l and l.endswith('"Archive"') for l in listing), f"Archive has children: {listing}")
check(any(l.endswith('"Archive/2026"') for l in listing), f"Archive/2026 listed: {listing}")
check(ok(m.list('""', "%"), "LIST %") and all("/" not in l.decode().split('"/"')[1] for l in m.list('""', "%")[1]), "% stops at /")
ok(m._simple_command("CREATE", "Entw&APw-rfe"), "CREATE modified UTF-7 name")
check(any(b'"Entw&APw-rfe"' in l for l in ok(m.list(), "LIST")), "UTF-7 name listed")
# LIST-EXTENDED / LIST-STATUS: statuses come with the listing; SPECIAL-USE selects.
typ, data = m._simple_command("LIST", '""', '"*"', "RETURN", "(STATUS (MESSAGES UNSEEN))")
check(typ == "OK", f"LIST RETURN STATUS: {typ} {data}")
statuses = [s.decode() for s in m.untagged_responses.pop("STATUS", [])]
check(any(s.startswith('"INBOX" (MESSAGES 3 UNSEEN 2)') for s in statuses), f"INBOX status in LIST: {statuses}")
check(len(statuses) == len([l for l in m.untagged_responses.pop("LIST", []) if b"\\Noselect" not in l]), "a STATUS per selectable mailbox")
typ, data = m._simple_command("LIST", "(SPECIAL-USE)", '""', '"*"')
special = [l.decode() for l in m.untagged_responses.pop("LIST", [])]
check(typ == "OK" and len(special) == 4 and not any("INBOX" in l for l in special), f"LIST (SPECIAL-USE): {special}")
ok(m.rename("Archive/2026", "Archive/Old"), "RENAME")
ok(m.subscribe("Archive/Old"), "SUBSCRIBE")
check(any(b"Archive/Old" in l for l in ok(m.lsub(), "LSUB")), "LSUB shows the subscription")
ok(m.unsubscribe("Archive/Old"), "UNSUBSCRIBE")
check(not any(b"Archive/Old" in l for l in ok(m.lsub(), "LSUB")), "unsubscribed")
typ, data = m.delete("INBOX")
check(typ == "NO", f"DELETE INBOX refused: {typ} {data}")
typ, data = m.select("No/Such")
check(typ == "NO", f"SELECT missing: {typ}")
ok(m.select("INBOX"), "SELECT INBOX again")

# COPY and MOVE with UIDPLUS codes.
typ, data = m.copy("3", "Archive/Old")
check(typ == "OK" and re.search(rb"\[COPYUID \d+ 3 1\]", data[0]), f"COPYUID: {data}")
status = ok(m.status("Archive/Old", "(MESSAGES UIDNEXT UNSEEN)"), "STATUS")[0]
check(b"MESSAGES 1" in status and b"UIDNEXT 2" in status and b"UNSEEN 0" in status, f"STATUS {status}")
typ, data = m.uid("MOVE", "1", "Trash")
check(typ == "OK", f"UID MOVE: {typ} {data}")
moved = [r for r in m.untagged_responses.get("OK", []) if b"COPYUID" in r]
check(moved and re.search(rb"\[COPYUID \d+ 1 1\]", moved[0]), f"COPYUID on MOVE: {m.untagged_responses}")
check(ok(m.search(None, "ALL"), "SEARCH after MOVE")[0] == b"1 2", "MOVE removed the message from INBOX")
typ, data = m.copy("1", "Nowhere")
check(typ == "NO" and b"TRYCREATE" in data[0], f"COPY to a missing mailbox: {data}")

# APPEND with flags and a date; the UID it reports fetches the same bytes.
appended = b"From: bob@example.test\r\nSubject: note to self\r\n\r\nremember the milk\r\n"
typ, data = m.append("Drafts", "(\\Draft \\Seen)", imaplib.Time2Internaldate(1700000000), appended)
check(typ == "OK", f"APPEND: {typ} {data}")
uid = re.search(rb"\[APPENDUID \d+ (\d+)\]", data[0])
check(uid, f"APPENDUID in {data}")
ok(m.select("Drafts"), "SELECT Drafts")
data = ok(m.uid("FETCH", uid.group(1).decode(), "(FLAGS INTERNALDATE BODY.PEEK[])"), "FETCH appended")
check(data[0][1] == appended, "appended bytes come back exactly")
check(b"\\Draft" in data[0][0] and b'"14-Nov-2023 22:13:20 +0000"' in data[0][0], f"flags/date kept: {data[0][0]}")

# BINARY (RFC 3516): the attachment's bytes with base64 undone, its decoded size, and a
# literal8 for content holding NUL; BINARY.PEEK leaves \Seen alone, BINARY sets it.
caps = ok(m.capability(), "CAPABILITY")[0]
check(b" BINARY " in caps, f"BINARY advertised: {caps}")
attachment = bytes([0, 1, 2, 255]) + b"binary attachment"
with_attachment = EmailMessage(policy=SMTP_POLICY)
with_attachment["From"], with_attachment["To"], with_attachment["Subject"] = BOB, BOB, "bytes"
with_attachment.set_content("see attached")
with_attachment.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="a.bin")
raw = with_attachment.as_bytes()
check(b"Content-Transfer-Encoding: base64" in raw, "the attachment travels in base64")
typ, data = m.append("Drafts", "()", None, raw)
check(typ == "OK", f"APPEND with attachment: {typ} {data}")
ok(m.select("Drafts"), "SELECT Drafts")
count = ok(m.search(None, "ALL"), "SEARCH Drafts")[0].split()[-1].decode()
data = ok(m.fetch(count, "(BINARY.PEEK[2] BINARY.SIZE[2] FLAGS)"), "FETCH BINARY.PEEK")
check(data[0][1] == attachment, f"BINARY[2] is the decoded attachment: {data}")
check(b"~{21}" in data[0][0], f"a literal8 for bytes with NUL: {data[0][0]}")
rest = b"".join(x if isinstance(x, bytes) else x[0] for x in data[1:])
check(b"BINARY.SIZE[2] 21" in rest and b"\\Seen" not in rest, f"size, and no \\Seen yet: {rest}")
data = ok(m.fetch(count, "(BINARY[1] FLAGS)"), "FETCH BINARY")
check(data[0][1].rstrip(b"\r\n") == b"see attached", f"BINARY[1]: {data}")
check(b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in data[1:]), f"BINARY sets \\Seen: {data}")

# EXPUNGE and UID EXPUNGE.
ok(m.select("INBOX"), "SELECT INBOX")
ok(m.store("1:2", "+FLAGS.SILENT", "(\\Deleted)"), "STORE \\Deleted")
typ, data = m.uid("EXPUNGE", "2")
check(typ == "OK", f"UID EXPUNGE: {typ} {data}")
check(ok(m.uid("SEARCH", "ALL"), "UID SEARCH")[0] == b"3", "UID EXPUNGE removed only UID 2")
ok(m.expunge(), "EXPUNGE")
check(ok(m.search(None, "ALL"), "SEARCH after EXPUNGE")[0] == b"", "EXPUNGE emptied INBOX")

# ID, NAMESPACE, CONDSTORE.
ok(m.xatom("ID", "NIL"), "ID")
ok(m.namespace(), "NAMESPACE")
ok(m.close(), "CLOSE")
ok(m.enable("CONDSTORE"), "ENABLE CONDSTORE")
ok(m.select("Archive/Old"), "SELECT Archive/Old")
data = ok(m.fetch("1", "(FLAGS MODSEQ)"), "FETCH MODSEQ")[0]
modseq = int(re.search(rb"MODSEQ \((\d+)\)", data).group(1))
typ, data = m._simple_command("UID", "STORE", "1", "(UNCHANGEDSINCE", f"{modseq - 1})", "+FLAGS", "(\\Answered)")
check(typ == "OK" and b"[MODIFIED 1]" in data[0], f"UNCHANGEDSINCE refused: {typ} {data}")
typ, data = m._simple_command("UID", "STORE", "1", "(UNCHANGEDSINCE", f"{modseq})", "+FLAGS", "(\\Answered)")
check(typ == "OK" and b"MODIFIED" not in (data[0] or b""), f"UNCHANGEDSINCE applied: {typ} {data}")
ok(m.delete("Archive/Old"), "DELETE")
check(m.logout()[0] == "BYE", "LOGOUT")

# UTF8=ACCEPT (RFC 6855): imaplib switches to UTF-8 after ENABLE; names travel as UTF-8, not
# modified UTF-7, and are the same mailboxes a modified UTF-7 client sees.
u = imaplib.IMAP4_SSL(HOST, IMAP_TLS, ssl_context=context)
ok(u.login(BOB, PASSWORDS[BOB]), "LOGIN (UTF-8 session)")
check(b"UTF8=ACCEPT" in ok(u.capability(), "CAPABILITY")[0], "UTF8=ACCEPT advertised")
ok(u.enable("UTF8=ACCEPT"), "ENABLE UTF8=ACCEPT")
check(u.utf8_enabled, "imaplib is in UTF-8 mode")
ok(u.create('"Entwürfe/日本"'), "CREATE a UTF-8 name")
listed = ok(u.list('""', '"Entw*"'), "LIST (UTF-8)")
check(any("Entwürfe/日本".encode() in line for line in listed), f"UTF-8 names in LIST: {listed}")
check(not any(b"&" in line for line in listed), f"no modified UTF-7 after ENABLE: {listed}")
status = ok(u.status('"Entwürfe/日本"', "(MESSAGES)"), "STATUS (UTF-8)")
check("Entwürfe/日本".encode() in status[0], f"STATUS name: {status}")
check(u.logout()[0] == "BYE", "LOGOUT (UTF-8 session)")
legacy = imaplib.IMAP4_SSL(HOST, IMAP_TLS, ssl_context=context)
ok(legacy.login(BOB, PASSWORDS[BOB]), "LOGIN (modified UTF-7 session)")
listed = ok(legacy.list('""', '"Entw*"'), "LIST (modified UTF-7)")
check(any(b"Entw&APw-rfe/&ZeVnLA-" in line for line in listed), f"the same mailbox in modified UTF-7: {listed}")
ok(legacy.delete("Entw&APw-rfe/&ZeVnLA-"), "DELETE by its modified UTF-7 name")
check(legacy.logout()[0] == "BYE", "LOGOUT (modified UTF-7 session)")
print("all scenarios passed")
