/**
 * The cluster manifests under deploy/k8s/, rendered by the pinned kustomize (`stepwise setup --for-tests`,
 * infra/kustomize.ts) exactly as `kubectl apply -k` would render them, and every object validated against the
 * schemas of `kubernetes-models` and `@kubernetes-models/keda` (test/helpers/k8s-schemas.ts). No cluster runs here:
 * this is what can be known without one.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import test from 'ava';
import { parseAllDocuments } from 'yaml';
import { QUEUE_KINDS, taskQueueOf, type QueueKind } from '../contract';
import { kustomizeBuild } from '../infra/kustomize';
import { demoSpec, parseSpec } from '../lib/pipeline/spec';
import { validateObject, type K8sObject } from './helpers/k8s-schemas';

const repoRoot = resolve(__dirname, '..');
const BASE = join(repoRoot, 'deploy', 'k8s', 'base');
const PRODUCTION = join(repoRoot, 'deploy', 'k8s', 'overlays', 'production');

/** Variables that are credentials: they may come from the Secret only, never from the ConfigMap or the manifests. */
const CREDENTIALS = [
  'AWS_ACCESS_KEY_ID',
  'AWS_SECRET_ACCESS_KEY',
  'TEMPORAL_API_KEY',
  'STEPWISE_PAYLOAD_KEYS',
  'OPENAI_API_KEY',
  'STEPWISE_OPENLINEAGE_API_KEY',
];
const SECRET_NAME = 'stepwise-credentials';

interface Container {
  name: string;
  image: string;
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: unknown }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  resources?: { requests?: Record<string, string | number>; limits?: Record<string, string | number> };
}
interface PodSpec {
  containers: Container[];
  nodeSelector?: Record<string, string>;
  tolerations?: unknown[];
  terminationGracePeriodSeconds?: number;
}
interface Deployment extends K8sObject {
  spec: { template: { spec: PodSpec } };
}
interface ScaledObject extends K8sObject {
  spec: {
    scaleTargetRef: { name: string; kind?: string };
    minReplicaCount?: number;
    triggers: { type: string; metadata: Record<string, string>; authenticationRef?: { name: string } }[];
  };
}
interface ConfigMap extends K8sObject {
  data: Record<string, string>;
}

async function render(dir: string): Promise<K8sObject[]> {
  const yaml = await kustomizeBuild(dir);
  return parseAllDocuments(yaml).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`kustomize printed YAML that does not parse: ${doc.errors[0].message}`);
    return doc.toJS() as K8sObject;
  });
}

const ofKind = <T extends K8sObject>(objects: K8sObject[], kind: string) =>
  objects.filter((o) => o.kind === kind) as T[];
const worker = (d: Deployment) => d.spec.template.spec.containers[0];

/** The queue a Deployment's worker serves, from its `stepwise worker --queue X` arguments. */
function queueOf(d: Deployment): QueueKind | undefined {
  const args = worker(d).args ?? [];
  const i = args.indexOf('--queue');
  return args[0] === 'worker' && i >= 0 ? (args[i + 1] as QueueKind) : undefined;
}

let base: K8sObject[];
let production: K8sObject[];

test.before(async () => {
  [base, production] = [await render(BASE), await render(PRODUCTION)];
});

test('every object kustomize renders, from the base and from the production overlay, matches its schema', (t) => {
  for (const object of [...base, ...production]) t.notThrows(() => validateObject(object), object.metadata.name);
  t.deepEqual(
    [...new Set(production.map((o) => o.kind))].sort(),
    ['ConfigMap', 'Deployment', 'Namespace', 'ScaledObject', 'ServiceAccount', 'TriggerAuthentication'],
    'what the overlay deploys'
  );
});

test('validation rejects a wrong type, a misspelt field and an unknown kind', (t) => {
  const gpu = structuredClone(ofKind<Deployment>(production, 'Deployment').find((d) => queueOf(d) === 'gpu')!);
  const podSpec = gpu.spec.template.spec as unknown as Record<string, unknown>;

  const wrongType = structuredClone(gpu);
  (wrongType.spec.template.spec as unknown as Record<string, unknown>).terminationGracePeriodSeconds = '180s';
  t.throws(() => validateObject(wrongType), { message: /does not match its schema.*terminationGracePeriodSeconds/ });

  const misspelt = structuredClone(gpu);
  const misspeltSpec = misspelt.spec.template.spec as unknown as Record<string, unknown>;
  misspeltSpec.nodeSelecter = podSpec.nodeSelector;
  delete misspeltSpec.nodeSelector;
  t.throws(() => validateObject(misspelt), {
    message: /fields its schema does not declare: \/spec\/template\/spec\/nodeSelecter$/,
  });

  // The same strictness holds for KEDA's CRD objects.
  const scaler = structuredClone(ofKind<ScaledObject>(production, 'ScaledObject')[0]) as unknown as {
    spec: Record<string, unknown>;
  };
  scaler.spec.minReplicas = 1;
  t.throws(() => validateObject(scaler as unknown as K8sObject), { message: /\/spec\/minReplicas$/ });

  t.throws(() => validateObject({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }), {
    message: /no schema for apiVersion example.com\/v1/,
  });
  // The untouched object still passes: the failures above are the edits'.
  t.notThrows(() => validateObject(gpu));
});

test('there is one worker Deployment per task queue, and only the GPU one asks for a GPU and GPU nodes', (t) => {
  const deployments = ofKind<Deployment>(production, 'Deployment');
  t.deepEqual(deployments.map(queueOf).sort(), [...QUEUE_KINDS].sort());
  for (const d of deployments) {
    const resources = worker(d).resources ?? {};
    const gpus = resources.limits?.['nvidia.com/gpu'];
    const pod = d.spec.template.spec;
    if (queueOf(d) === 'gpu') {
      t.is(Number(gpus), 1, 'one GPU per GPU worker');
      t.is(Number(resources.requests?.['nvidia.com/gpu'] ?? gpus), Number(gpus), 'a GPU request equals its limit');
      t.truthy(pod.nodeSelector && Object.keys(pod.nodeSelector).length > 0, 'GPU workers are placed on GPU nodes');
      t.regex(worker(d).image, /stepwise-worker-gpu:/);
    } else {
      t.is(gpus, undefined);
      t.is(resources.requests?.['nvidia.com/gpu'], undefined);
      t.is(pod.nodeSelector, undefined);
      t.is(pod.tolerations, undefined);
      t.regex(worker(d).image, /stepwise-worker-cpu:/);
    }
  }
});

test('a worker has longer to drain than the heartbeat timeouts of what it runs', (t) => {
  // The defaults a spec gets when it sets none: training and evaluation on the GPU queue, teacher shards on the CPU.
  const defaults = parseSpec(demoSpec());
  const timeouts: Record<QueueKind, number> = {
    gpu: defaults.student.heartbeatTimeoutSeconds,
    cpu: defaults.teacher.heartbeatTimeoutSeconds,
  };
  for (const d of ofKind<Deployment>(production, 'Deployment')) {
    const grace = d.spec.template.spec.terminationGracePeriodSeconds ?? 30;
    const queue = queueOf(d)!;
    t.true(grace > timeouts[queue], `${d.metadata.name}: grace ${grace} s vs heartbeat timeout ${timeouts[queue]} s`);
  }
  t.true(timeouts.gpu >= timeouts.cpu, 'the training timeout is the one that bounds the GPU worker');
});

test('settings come from the ConfigMap and credentials only from the Secret', (t) => {
  const configMaps = ofKind<ConfigMap>(production, 'ConfigMap');
  t.is(configMaps.length, 1);
  const [config] = configMaps;
  t.is(ofKind(production, 'Secret').length, 0, 'credentials are never rendered from git');
  const readme = readFileSync(join(repoRoot, 'README.md'), 'utf8');
  for (const [key, value] of Object.entries(config.data)) {
    t.regex(key, /^(TEMPORAL|STEPWISE|AWS)_/);
    t.true(readme.includes(`\`${key}\``), `${key} is a documented setting (README)`);
    t.false(CREDENTIALS.includes(key), `${key} is a credential and must not be in the ConfigMap`);
    t.is(typeof value, 'string');
  }
  // The overlay's values were merged over the base's.
  t.is(config.data.TEMPORAL_NAMESPACE, 'ml');
  t.truthy(config.data.TEMPORAL_ADDRESS);
  t.regex(config.data.STEPWISE_STORE, /^s3:\/\//);

  for (const d of ofKind<Deployment>(production, 'Deployment')) {
    const c = worker(d);
    const refs = c.envFrom ?? [];
    t.deepEqual(
      refs.map((r) => r.configMapRef?.name).filter(Boolean),
      [config.metadata.name],
      `${d.metadata.name} reads the rendered (hash-suffixed) ConfigMap`
    );
    t.deepEqual(refs.map((r) => r.secretRef?.name).filter(Boolean), [SECRET_NAME]);
    for (const e of c.env ?? []) t.false(CREDENTIALS.includes(e.name), `${e.name} set inline in ${d.metadata.name}`);
  }
  const [auth] = ofKind<K8sObject & { spec: { secretTargetRef: { name: string; key: string }[] } }>(
    production,
    'TriggerAuthentication'
  );
  t.deepEqual(auth.spec.secretTargetRef, [{ parameter: 'apiKey', name: SECRET_NAME, key: 'TEMPORAL_API_KEY' }]);
});

test('each autoscaler scales one worker Deployment on the backlog of that worker’s task queue', (t) => {
  const deployments = ofKind<Deployment>(production, 'Deployment');
  const [config] = ofKind<ConfigMap>(production, 'ConfigMap');
  const auths = ofKind(production, 'TriggerAuthentication').map((a) => a.metadata.name);
  const scalers = ofKind<ScaledObject>(production, 'ScaledObject');
  const targets = scalers.map((s) => {
    const target = deployments.find((d) => d.metadata.name === s.spec.scaleTargetRef.name);
    if (!target) return t.fail(`${s.metadata.name} scales ${s.spec.scaleTargetRef.name}, which is not rendered`);
    t.is(s.spec.scaleTargetRef.kind ?? 'Deployment', 'Deployment');
    const queue = queueOf(target)!;
    t.is(s.spec.triggers.length, 1);
    const [trigger] = s.spec.triggers;
    t.is(trigger.type, 'temporal');
    t.is(trigger.metadata.taskQueue, taskQueueOf(queue), `${s.metadata.name} watches ${queue}'s queue`);
    t.is(trigger.metadata.namespace, config.data.TEMPORAL_NAMESPACE, 'the Temporal namespace the workers use');
    t.truthy(config.data[trigger.metadata.endpointFromEnv], 'the address the workers use');
    t.true(auths.includes(trigger.authenticationRef!.name));
    // The GPU queue holds activities only; a GPU worker takes one at a time, so each waiting task is one worker.
    if (queue === 'gpu') {
      t.is(trigger.metadata.queueTypes, 'activity');
      t.is(trigger.metadata.targetQueueSize, '1');
    }
    // Never scaled to zero by default (see deploy/k8s/base/autoscaling.yaml).
    t.true((s.spec.minReplicaCount ?? 0) >= 1);
    return target.metadata.name;
  });
  t.deepEqual(targets.sort(), deployments.map((d) => d.metadata.name).sort(), 'one autoscaler per Deployment');
});

test('both workers carry the image tag as STEPWISE_BUILD_ID', (t) => {
  const ids = ofKind<Deployment>(production, 'Deployment').map((d) => {
    const c = worker(d);
    const id = c.env?.find((e) => e.name === 'STEPWISE_BUILD_ID')?.value;
    t.is(id, c.image.slice(c.image.lastIndexOf(':') + 1), `${d.metadata.name}: ${c.image}`);
    return id;
  });
  t.is(new Set(ids).size, 1, 'one build id for the release');
});

test('an overlay that suffixes every name (one set of workers per release) keeps the autoscalers pointed at theirs', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'stepwise-kustomize-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  // kustomize takes a base only by a relative path.
  await writeFile(
    join(dir, 'kustomization.yaml'),
    [
      'apiVersion: kustomize.config.k8s.io/v1beta1',
      'kind: Kustomization',
      'resources:',
      `  - ${relative(dir, PRODUCTION)}`,
      'nameSuffix: -b2',
      'labels:',
      '  - pairs:',
      '      stepwise.example/release: b2',
      '    includeSelectors: true',
      '',
    ].join('\n')
  );
  const objects = await render(dir);
  for (const object of objects) validateObject(object);
  const names = ofKind(objects, 'Deployment').map((d) => d.metadata.name);
  t.deepEqual(names.sort(), ['stepwise-worker-cpu-b2', 'stepwise-worker-gpu-b2']);
  for (const s of ofKind<ScaledObject>(objects, 'ScaledObject')) {
    t.true(names.includes(s.spec.scaleTargetRef.name), s.spec.scaleTargetRef.name);
    t.is(s.spec.triggers[0].authenticationRef?.name, 'stepwise-temporal-b2');
  }
});
