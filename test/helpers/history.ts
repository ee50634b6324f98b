/** Workflow histories as fixtures: what `test/replay.test.ts` replays against the current workflow code. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ensureTemporalCli } from '../../infra/temporal';

/** A workflow's history as the `temporal` CLI prints it (the JSON form `Worker.runReplayHistory` reads). */
export async function historyJson(address: string, workflowId: string): Promise<string> {
  const { stdout } = await promisify(execFile)(
    await ensureTemporalCli(),
    ['workflow', 'show', '--workflow-id', workflowId, '--address', address, '--output', 'json'],
    { maxBuffer: 64 * 1024 * 1024 }
  );
  return stdout;
}
