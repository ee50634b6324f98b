/** The `stepwise` command as a user runs it: a child process, its exit code and both outputs kept for assertions. */
import { execFile, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const BIN = resolve(__dirname, '..', '..', 'bin', 'stepwise.js');

/** Runs `stepwise ARGS` with `env` over this process's environment; never throws for a non-zero exit. */
export async function stepwise(args: string[], env: Record<string, string> = {}) {
  try {
    const { stdout, stderr } = await run(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/**
 * `stepwise ui ARGS` as a user starts it, resolved once it prints its URL (`http://127.0.0.1:<port>/`, any token
 * fragment left off). `output()` is everything it printed; `stop()` ends it and waits for its exit.
 */
export async function startUi(
  args: string[],
  env: Record<string, string>
): Promise<{ url: string; output(): string; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [BIN, 'ui', ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', r));
  const stop = async () => {
    child.kill('SIGTERM');
    await exited;
  };
  try {
    const url = await new Promise<string>((resolveUrl, reject) => {
      child.stdout.on('data', (c: Buffer) => {
        output += c.toString();
        const m = /(http:\/\/127\.0\.0\.1:\d+\/)/.exec(output);
        if (m) resolveUrl(m[1]);
      });
      void exited.then((code) => reject(new Error(`stepwise ui exited (${code}) before printing its URL:\n${output}`)));
    });
    return { url, output: () => output, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
