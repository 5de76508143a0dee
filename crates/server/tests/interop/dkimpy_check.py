"""dkimpy, the independent DKIM implementation, against sealmail.

verify MESSAGE DNS_HOST DNS_PORT: verifies every DKIM-Signature in MESSAGE, looking keys up in
  the test's DNS server; prints one line per signature and exits 1 unless all verify.
sign MESSAGE_IN MESSAGE_OUT KEY_FILE DOMAIN SELECTOR [ALGORITHM [length]]: signs with dkimpy
  (relaxed/relaxed; rsa-sha256 unless ALGORITHM says e.g. rsa-sha1; with an l= body length tag
  if "length" is given) for sealmail to verify.
"""

import sys

import dkim
import dns.resolver


def verify(path, host, port):
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = int(port)
    resolver.lifetime = 5

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        answer = resolver.resolve(name, "TXT")
        return b"".join(b"".join(record.strings) for record in answer)

    message = open(path, "rb").read()
    checker = dkim.DKIM(message)
    count = sum(1 for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n") if line.lower().startswith(b"dkim-signature:"))
    if count == 0:
        print("no DKIM-Signature")
        return 1
    failures = 0
    for index in range(count):
        ok = checker.verify(idx=index, dnsfunc=dnsfunc)
        print(f"signature {index}: {'pass' if ok else 'fail'}")
        failures += 0 if ok else 1
    return 1 if failures else 0


def sign(source, target, key_file, domain, selector, algorithm="rsa-sha256", length=""):
    message = open(source, "rb").read()
    key = open(key_file, "rb").read()
    signature = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        signature_algorithm=algorithm.encode(),
        length=length == "length",
    )
    open(target, "wb").write(signature + message)
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit(verify(*args) if command == "verify" else sign(*args))
