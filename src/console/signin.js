// The sign-in page: one field for a token made with `token create`
// (namespace or admin). What happens with the token is app.js's business.

import { h, field } from "./dom.js";

export function renderSignIn(main, onToken) {
  const input = h("input", {
    id: "token", name: "token", type: "password", autocomplete: "off",
    spellcheck: "false", required: true,
  });
  const form = h("form", { class: "card signin", id: "signin-form" },
    field("Access token", input,
      "A token made with: notification-reconciler token create --name NAME --namespace NS. " +
      "It is kept in this browser tab only (sessionStorage) until you sign out or close the tab."),
    h("button", { type: "submit", class: "primary" }, "Sign in"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (token) onToken(token);
  });
  main.replaceChildren(
    h("h1", { tabindex: "-1" }, "Sign in"),
    h("p", {}, "The console shows the delivery record of a namespace and manages its webhook endpoints, " +
      "with the rights of the token you sign in with."),
    form);
  input.focus();
}
