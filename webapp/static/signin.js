// Docket's sign-in page: the run command prints a link ending in #token=…; a URL fragment never
// reaches the server (or its logs), so this script moves it into the form and submits it (POST,
// with the page's CSRF token), then forgets it from the address bar.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const match = /^#token=([A-Za-z0-9_\-]+)$/.exec(window.location.hash);
  if (!match) return;
  history.replaceState(null, "", window.location.pathname + window.location.search);
  if (document.getElementById("signin-error")) return; // that token was refused: don't loop
  document.getElementById("signin-token").value = match[1];
  document.getElementById("signin-form").submit();
});
