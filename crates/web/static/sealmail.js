// Progressive enhancement only: the pages work without it. Copy buttons copy the text of the
// element their data-copy attribute names.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  if (!source || !navigator.clipboard) return;
  navigator.clipboard.writeText(source.textContent).then(() => {
    button.textContent = "Copied";
  });
});

// Security keys and passkeys (WebAuthn): a button with data-webauthn="create" (account page)
// or "get" (second-factor page) runs the ceremony with the data the server put on it, fills
// its form's hidden fields with the authenticator's answer, and submits the form. The server
// checks everything (crates/web/src/webauthn.rs).
const base64url = {
  decode(text) {
    let b64 = text.replace(/-/g, "+").replace(/_/g, "/");
    while (b64.length % 4) b64 += "=";
    return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  },
  encode(buffer) {
    let text = "";
    for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  },
};
const credentialList = (text) =>
  (text || "").split(",").filter(Boolean).map((id) => ({ type: "public-key", id: base64url.decode(id) }));
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-webauthn]");
  if (!button) return;
  const form = button.form;
  const data = button.dataset;
  if (!window.PublicKeyCredential || !navigator.credentials) {
    button.textContent = "This browser has no security key support";
    return;
  }
  if (!form.reportValidity()) return;
  const fields = form.elements;
  try {
    if (data.webauthn === "create") {
      const credential = await navigator.credentials.create({
        publicKey: {
          challenge: base64url.decode(data.challenge),
          rp: { id: data.rp, name: data.rp },
          user: { id: base64url.decode(data.userId), name: data.userName, displayName: data.userName },
          pubKeyCredParams: [-7, -8, -257].map((alg) => ({ type: "public-key", alg })),
          excludeCredentials: credentialList(data.exclude),
          authenticatorSelection: { residentKey: "discouraged", userVerification: "discouraged" },
          attestation: "none",
          timeout: 120000,
        },
      });
      const response = credential.response;
      fields.credential_id.value = base64url.encode(credential.rawId);
      fields.client_data.value = base64url.encode(response.clientDataJSON);
      fields.authenticator_data.value = base64url.encode(response.getAuthenticatorData());
      fields.public_key.value = base64url.encode(response.getPublicKey());
    } else {
      const credential = await navigator.credentials.get({
        publicKey: {
          challenge: base64url.decode(data.challenge),
          rpId: data.rp,
          allowCredentials: credentialList(data.allow),
          userVerification: "discouraged",
          timeout: 120000,
        },
      });
      const response = credential.response;
      fields.credential_id.value = base64url.encode(credential.rawId);
      fields.client_data.value = base64url.encode(response.clientDataJSON);
      fields.authenticator_data.value = base64url.encode(response.authenticatorData);
      fields.signature.value = base64url.encode(response.signature);
    }
    form.submit();
  } catch (error) {
    button.textContent = "The key did not answer; try again";
  }
});
