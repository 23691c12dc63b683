// A storage adapter for oidc-provider that keeps everything in one JSON file,
// so the demo's authorization server remembers dynamic client registrations,
// grants, sessions and refresh tokens across restarts. It implements the
// adapter interface oidc-provider documents (the `adapter` option: a class
// constructed with a model name, with upsert, find, findByUid,
// findByUserCode, consume, destroy and revokeByGrantId), as its own
// in-memory adapter does. For one local demo user: every write rewrites the
// file (write to a temporary file, then rename), and lookups scan.
import fs from 'node:fs';
import path from 'node:path';

const now = () => Math.floor(Date.now() / 1000);

export default function fileAdapter(file) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  // key "<Model>:<id>" -> { payload, expiresAt (epoch seconds, or null) }
  const entries = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {};
  const live = (e) => e && (e.expiresAt === null || e.expiresAt > now());
  const save = () => {
    for (const [k, e] of Object.entries(entries)) if (!live(e)) delete entries[k];
    fs.writeFileSync(`${file}.tmp`, JSON.stringify(entries), { mode: 0o600 });
    fs.renameSync(`${file}.tmp`, file);
  };

  return class FileAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      entries[this.key(id)] = { payload, expiresAt: expiresIn ? now() + expiresIn : null };
      save();
    }

    async find(id) {
      const e = entries[this.key(id)];
      return live(e) ? e.payload : undefined;
    }

    async findBy(field, value) {
      const e = Object.entries(entries).find(([k, v]) => k.startsWith(`${this.model}:`) && v.payload[field] === value);
      return e && live(e[1]) ? e[1].payload : undefined;
    }

    async findByUid(uid) {
      return this.findBy('uid', uid);
    }

    async findByUserCode(userCode) {
      return this.findBy('userCode', userCode);
    }

    async consume(id) {
      const e = entries[this.key(id)];
      if (e) e.payload.consumed = now();
      save();
    }

    async destroy(id) {
      delete entries[this.key(id)];
      save();
    }

    async revokeByGrantId(grantId) {
      for (const [k, e] of Object.entries(entries)) if (e.payload.grantId === grantId) delete entries[k];
      save();
    }
  };
}
