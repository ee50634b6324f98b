/** The log files of the services a command starts (`stepwise dev`, and `stepwise run`'s embedded services). */
import { appendingFile, type LineSink } from '../../workers/logging';

/**
 * A service's log file under a state folder's `logs`: appended to, never truncated (the folder collects every run's),
 * and opened with a line naming this command, so a reader can tell the runs apart. `echo` gets every later line too
 * (the console, with --verbose); `json` opens the file with a JSON record instead, so a JSON log stays all JSON.
 */
export function serviceLog(file: string, opts: { echo?: LineSink; json?: boolean } = {}): LineSink & { close(): void } {
  const sink = appendingFile(file);
  const opened = `--- ${new Date().toISOString()} pid ${process.pid}: stepwise ${process.argv.slice(2).join(' ')}`;
  sink(opts.json ? JSON.stringify({ time: new Date().toISOString(), level: 'info', message: opened }) : opened);
  const { echo } = opts;
  const write = echo
    ? (line: string) => {
        sink(line);
        echo(line);
      }
    : sink;
  return Object.assign((line: string) => write(line), { close: () => sink.close() });
}
