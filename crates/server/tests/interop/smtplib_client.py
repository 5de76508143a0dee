"""An independent SMTP client (Python's smtplib) against a running sealmail quickstart.

Driven by tests/interop.rs, which passes ports, the CA file and passwords in the environment,
then checks what was stored. Every message sent is also written to $OUT_DIR/NAME.eml so the
Rust side can compare the stored bytes with what smtplib put on the wire.
"""

import os
import smtplib
import ssl
import sys
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY

HOST = "127.0.0.1"
MX = int(os.environ["MX_PORT"])
SUBMISSION_TLS = int(os.environ["SUBMISSION_TLS_PORT"])
SUBMISSION_STARTTLS = int(os.environ["SUBMISSION_STARTTLS_PORT"])
OUT = os.environ["OUT_DIR"]
ALICE, BOB = "alice@example.test", "bob@example.test"
PASSWORDS = {ALICE: os.environ["ALICE_PASSWORD"], BOB: os.environ["BOB_PASSWORD"]}

context = ssl.create_default_context(cafile=os.environ["CA_FILE"])
context.minimum_version = ssl.TLSVersion.TLSv1_2


def save(name, data):
    with open(os.path.join(OUT, name + ".eml"), "wb") as f:
        f.write(data)
    return data


def expect_refused(what, error_type, code, action):
    try:
        action()
    except error_type as e:
        got = getattr(e, "smtp_code", None)
        if got is None and hasattr(e, "recipients"):
            got = list(e.recipients.values())[0][0]
        if got != code:
            sys.exit(f"{what}: expected {code}, got {got}: {e}")
        return
    sys.exit(f"{what}: was accepted")


# 1. Implicit TLS submission, AUTH (smtplib picks PLAIN), a multipart 8-bit message.
multipart = EmailMessage(policy=SMTP_POLICY)
multipart["From"] = ALICE
multipart["To"] = BOB
multipart["Subject"] = "Multipart Grüße"
multipart.set_content("Hallo Bob,\nein Gruß aus Köln.\n.leading dot\n", charset="utf-8", cte="8bit")
multipart.add_attachment(bytes(range(256)) * 64, maintype="application", subtype="octet-stream", filename="data.bin")
with smtplib.SMTP_SSL(HOST, SUBMISSION_TLS, context=context) as s:
    s.ehlo("python.test")
    assert s.has_extn("auth") and s.has_extn("8bitmime") and s.has_extn("smtputf8"), s.esmtp_features
    s.login(ALICE, PASSWORDS[ALICE])
    data = save("multipart", multipart.as_bytes())
    s.sendmail(ALICE, [BOB], data, mail_options=["BODY=8BITMIME"])

# 2. STARTTLS submission, AUTH after TLS only, a large message (about 2 MB).
large = EmailMessage(policy=SMTP_POLICY)
large["From"] = BOB
large["To"] = ALICE
large["Subject"] = "large"
large.set_content("".join(f"line {i:07d} of a large message\n" for i in range(60000)))
with smtplib.SMTP(HOST, SUBMISSION_STARTTLS) as s:
    s.ehlo("python.test")
    assert not s.has_extn("auth"), "AUTH offered before TLS"
    s.starttls(context=context)
    s.ehlo("python.test")
    assert s.has_extn("auth")
    s.login(BOB, PASSWORDS[BOB])
    s.sendmail(BOB, [ALICE], save("large", large.as_bytes()))

    # 3. Spoofing a colleague, in the envelope and in the header.
    expect_refused("envelope spoof", smtplib.SMTPSenderRefused, 553, lambda: s.sendmail(ALICE, [ALICE], b"From: bob@example.test\r\n\r\nx\r\n"))
    s.rset()
    expect_refused("header spoof", smtplib.SMTPDataError, 553, lambda: s.sendmail(BOB, [ALICE], b"From: alice@example.test\r\nSubject: x\r\n\r\nx\r\n"))

# 4. A wrong password.
with smtplib.SMTP_SSL(HOST, SUBMISSION_TLS, context=context) as s:
    expect_refused("wrong password", smtplib.SMTPAuthenticationError, 535, lambda: s.login(ALICE, "not-the-password"))

# 5. MX: mail from outside to a local user, an unknown user, and a relay attempt.
with smtplib.SMTP(HOST, MX, local_hostname="remote.test") as s:
    s.starttls(context=context)
    s.ehlo("remote.test")
    s.sendmail("someone@remote.test", [ALICE], save("inbound", b"From: someone@remote.test\r\nTo: alice@example.test\r\nSubject: inbound\r\n\r\nHello from outside.\r\n"))
    expect_refused("unknown user", smtplib.SMTPRecipientsRefused, 550, lambda: s.sendmail("x@remote.test", ["nobody@example.test"], b"Subject: x\r\n\r\nx\r\n"))
    expect_refused("relay", smtplib.SMTPRecipientsRefused, 550, lambda: s.sendmail("x@remote.test", ["victim@elsewhere.test"], b"Subject: x\r\n\r\nx\r\n"))

# 6. SMTPUTF8: a UTF-8 sender address (smtplib adds SMTPUTF8 when asked).
utf8 = EmailMessage(policy=SMTP_POLICY.clone(utf8=True))
utf8["From"] = "Jörg <jörg@remote.test>"
utf8["To"] = BOB
utf8["Subject"] = "Grüße"
utf8.set_content("UTF-8 headers and body: ÄÖÜ\n", cte="8bit")
with smtplib.SMTP(HOST, MX) as s:
    s.starttls(context=context)
    s.ehlo("remote.test")
    s.send_message(utf8, from_addr="jörg@remote.test", to_addrs=[BOB], mail_options=["SMTPUTF8"])

print("smtplib: all scenarios passed")
