// What the test clients (client-oauth.mjs, client-credentials.mjs) share:
// their JSON-lines events on stdout, the `whoami` calls made once
// authorized, and how a run ends (exit 0, or 1 with the error on stderr).

export const say = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

// Calls `whoami` `calls` times on a connected Client; one event per call
// with the tool's text, parsed as JSON if it is, and `tag`'s fields (which
// server, where a client talks to several). Then closes the client.
export async function callWhoami(client, calls, tag = {}) {
  for (let call = 1; call <= calls; call += 1) {
    const result = await client.callTool({ name: 'whoami', arguments: {} });
    if (result.isError) throw new Error(`whoami failed: ${JSON.stringify(result.content)}`);
    const text = result.content.find((c) => c.type === 'text')?.text;
    let parsed = text;
    try { parsed = JSON.parse(text); } catch { /* keep the text */ }
    say({ event: 'whoami', ...tag, call, result: parsed });
  }
  await client.close();
  say({ event: 'done', ...tag });
}

export function run(name, main) {
  main().then(() => process.exit(0), (err) => {
    process.stderr.write(`${name}: ${err?.stack || err}\n`);
    process.exit(1);
  });
}
