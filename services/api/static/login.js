// /login: sign in with the JSON API (it sets the session cookie), then go back where the user was.
import { api, byId, clear, h, safeNext } from "/static/common.js";

const form = byId("login-form");
const errorBox = byId("login-error");
const submit = byId("login-submit");
const next = safeNext(new URLSearchParams(location.search).get("next"));

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  clear(errorBox);
  submit.disabled = true;
  try {
    await api("/v1/auth/login", {
      method: "POST",
      redirect: false,
      body: { username: byId("username").value.trim(), password: byId("password").value },
    });
    location.replace(next);
  } catch (err) {
    const message = err.status === 401 ? "Wrong username or password." : err.message;
    clear(errorBox, h("p", { class: "notice error", role: "alert" }, message));
    byId("password").select();
  } finally {
    submit.disabled = false;
  }
});
