"""An independent SCRAM-SHA-256(-PLUS) client (scramp) over Python's imaplib and smtplib.

Driven by tests/scram.rs, one login per run:

    scramp_client.py login PROTOCOL PORT CA_FILE USER PASSWORD MECHANISM BINDING
        PROTOCOL  imap | smtp (AUTH with an initial response) | smtp-no-ir (AUTH, then 334)
        BINDING   none | tls-server-end-point (from the TLS socket) | cert:PATH
                  (tls-server-end-point data of another certificate: a binding that is not ours)
    scramp_client.py totp OTPAUTH_URI    prints the current RFC 6238 code

`login` prints one JSON object: the outcome ("ok", "refused" or "scramp-error"), the server's
reply, the SCRAM messages both sides sent (the password never appears in them), whether scramp
verified the server's signature, the mechanisms the server advertised, and for "ok" whether the
session then works as logged in. scramp raises when the server-final-message does not carry the
signature the password gives, so "verified" is scramp's own check.
"""

import base64
import hashlib
import hmac
import imaplib
import json
import smtplib
import ssl
import struct
import sys
import time
import urllib.parse

import scramp
from scramp.core import CBindData

HOST = "127.0.0.1"


class Exchange:
    """The SASL callback imaplib and smtplib call with each decoded challenge."""

    def __init__(self, client):
        self.client = client
        self.messages = []
        self.verified = False

    def __call__(self, challenge=None):
        if not self.messages:
            # imaplib passes the empty first continuation; smtplib passes nothing when it sends
            # an initial response, or the empty 334 challenge when it does not.
            if challenge:
                raise RuntimeError(f"unexpected first challenge {challenge!r}")
            first = self.client.get_client_first()
            self.messages.append(["client", first])
            return first
        text = challenge.decode()
        self.messages.append(["server", text])
        if text.startswith("r="):
            self.client.set_server_first(text)
            final = self.client.get_client_final()
            self.messages.append(["client", final])
            return final
        self.client.set_server_final(text)
        self.verified = True
        # Nothing follows the server-final-message but the empty response.
        return ""


def binding_for(binding, sock):
    if binding == "none":
        return None
    if binding == "tls-server-end-point":
        return ("tls-server-end-point", sock)
    if binding.startswith("cert:"):
        with open(binding[len("cert:"):]) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        return ("tls-server-end-point", CBindData.from_der(der).data)
    raise SystemExit(f"unknown binding {binding}")


def login(protocol, port, ca_file, user, password, mechanism, binding):
    context = ssl.create_default_context(cafile=ca_file)
    # The certificate names mail.example.test and we connect to 127.0.0.1; the chain is still
    # verified against CA_FILE.
    context.check_hostname = False
    result = {"outcome": None, "reply": "", "verified": False, "session": None}
    if protocol == "imap":
        conn = imaplib.IMAP4_SSL(HOST, port, ssl_context=context)
        result["mechanisms"] = [c[5:] for c in conn.capabilities if c.startswith("AUTH=")]
    else:
        conn = smtplib.SMTP_SSL(HOST, port, context=context)
        conn.ehlo("client.example.test")
        result["mechanisms"] = conn.esmtp_features.get("auth", "").split()
    client = scramp.ScramClient([mechanism], user, password, channel_binding=binding_for(binding, conn.sock))
    exchange = Exchange(client)
    try:
        if protocol == "imap":
            typ, data = conn.authenticate(mechanism, exchange)
            result["reply"] = f"{typ} {data}"
            result["outcome"] = "ok" if typ == "OK" else "refused"
            if typ == "OK":
                result["session"] = conn.select("INBOX")[0]
        else:
            code, reply = conn.auth(mechanism, exchange, initial_response_ok=(protocol == "smtp"))
            result["reply"] = f"{code} {reply.decode()}"
            result["outcome"] = "ok"
            result["session"] = "OK" if conn.mail(user)[0] == 250 else "refused"
    except (imaplib.IMAP4.error, smtplib.SMTPException) as e:
        result["outcome"] = "refused"
        result["reply"] = str(e)
    except scramp.ScramException as e:
        result["outcome"] = "scramp-error"
        result["reply"] = str(e)
    result["messages"] = exchange.messages
    result["verified"] = exchange.verified
    print(json.dumps(result))


def totp(uri):
    """RFC 6238 with the URI's parameters (SHA-1, 6 digits, 30 s), as an authenticator app does."""
    query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
    secret = query["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    counter = int(time.time()) // int(query.get("period", ["30"])[0])
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    digits = int(query.get("digits", ["6"])[0])
    print(str(value % 10**digits).zfill(digits))


if sys.argv[1] == "login":
    protocol, port, ca_file, user, password, mechanism, binding = sys.argv[2:9]
    login(protocol, int(port), ca_file, user, password, mechanism, binding)
elif sys.argv[1] == "totp":
    totp(sys.argv[2])
else:
    raise SystemExit(f"unknown command {sys.argv[1]}")
