// Docket's sign-in page: the run command prints a link ending in #token=…; a URL fragment never
// reaches the server (or its logs), so this script moves it into the form and submits it (POST,
// with the page's CSRF token), then forgets it from the address bar. A link followed while this
// page is already open only changes the fragment (no new page load): "hashchange" catches that.
"use strict";

function signInFromFragment(event) {
  const match = /^#token=([A-Za-z0-9_\-]+)$/.exec(window.location.hash);
  if (!match) return;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  // On the page that refused a token, only a newly followed link submits (never a loop).
  if (!event && document.getElementById("signin-error")) return;
  document.getElementById("signin-token").value = match[1];
  document.getElementById("signin-form").submit();
}

document.addEventListener("DOMContentLoaded", () => signInFromFragment(null));
window.addEventListener("hashchange", signInFromFragment);
