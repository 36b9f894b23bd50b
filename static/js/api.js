// Calls to the admin API: the session cookie plus the page's XSRF token; errors become exceptions with the
// server's own message.

const xsrfToken = document.querySelector('meta[name="xsrf-token"]').content;

export async function api(method, path, body) {
  const options = { method, credentials: "same-origin", headers: { "X-XSRFToken": xsrfToken } };
  if (body instanceof FormData) {
    options.body = body;
  } else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  if (response.status === 401) {
    window.location.assign("/admin");
    throw new Error("Signed out: the admin token is needed again.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not this server's JSON (a proxy's error page, say): the status says what happened.
  }
  if (!response.ok) {
    const error = new Error((data && data.error && data.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}
