/**
 * Reading a worker's Prometheus endpoint (`stepwise worker --metrics-port`, workers/telemetry.ts) in tests: the
 * scrape as text, and its samples parsed so a test can sum a series over the labels it does not care about.
 */

/** One sample line: `name{label="value",…} value`. */
export interface MetricSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The text a Prometheus server would scrape from `http://<address>/metrics` (`address` is `host:port`). */
export async function scrapeMetrics(address: string): Promise<string> {
  const response = await fetch(`http://${address}/metrics`);
  if (!response.ok) throw new Error(`GET http://${address}/metrics answered ${response.status}`);
  return response.text();
}

/** The samples of a scrape in the text exposition format (comments and blank lines skipped). */
export function parseMetrics(text: string): MetricSample[] {
  const samples: MetricSample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key] = value;
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of a series' samples whose labels include `labels` (0 when there are none). */
export function metricSum(samples: readonly MetricSample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((sum, s) => sum + s.value, 0);
}

/** Whether any sample of `name` is there. */
export function hasMetric(samples: readonly MetricSample[], name: string): boolean {
  return samples.some((s) => s.name === name);
}
