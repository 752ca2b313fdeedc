// What both pages share: talking to the demo server (minireptile/demo/server.py).

// POST body as JSON to path; the reply's JSON, or an Error with the server's one-line message.
async function post(path, body) {
  let response;
  try {
    response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify(body)});
  } catch (err) {
    throw new Error("the demo server does not answer (is `minireptile demo` still running?)");
  }
  const reply = await response.json().catch(() => ({error: "the server sent no JSON"}));
  if (!response.ok) throw new Error(reply.error || ("HTTP " + response.status));
  return reply;
}
