/** Process checks for tests that kill workers and training children and then look for what is left. */
import { execFileSync, type ChildProcess } from 'node:child_process';

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Student training processes (lib/student/child-main.ts) whose parent is `parent`: other test files train too. */
export function trainingChildren(parent: number = process.pid): number[] {
  const out = execFileSync('ps', ['-eo', 'pid=,ppid=,args='], { encoding: 'utf8' });
  return out
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .filter(([, ppid, ...args]) => Number(ppid) === parent && args.join(' ').includes('child-main'))
    .map(([pid]) => Number(pid));
}

/** Signals a detached worker's whole process group (the worker and its training child). */
export function killGroup(worker: ChildProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-worker.pid!, signal);
  } catch {
    // Already gone.
  }
}
