/**
 * Validation of rendered Kubernetes objects against the OpenAPI schemas that the `kubernetes-models` package ships
 * (the built-in kinds) and `@kubernetes-models/keda` ships (KEDA's CRDs, generated from KEDA's published CRD
 * schemas), in the spirit of `kubeconform -strict`, whose schema download cannot happen here.
 *
 * Those schemas, like the API server's, do not forbid unknown fields: the server rejects them only because kubectl
 * asks for strict field validation. So a typo such as `nodeSelecter` would pass the schema and be dropped (or
 * refused) by a real cluster. {@link validateObject} adds that check: it runs the packaged validator on a proxy of
 * the object that records which properties the validator looks up. A compiled schema looks up every property it
 * declares, and enumerates the keys of a map (labels, ConfigMap data, resource limits); a key of an object with
 * declared properties that the validator never looked up is therefore unknown to the schema.
 */
import * as core from 'kubernetes-models/v1';
import * as apps from 'kubernetes-models/apps/v1';
import * as keda from '@kubernetes-models/keda/keda.sh/v1alpha1';

/** A model class of the packages: its prototype's `validate` runs the schema's compiled validator on `this`. */
type ModelClass = { prototype: { validate(): void } };

const MODELS: Record<string, Record<string, unknown>> = {
  v1: core,
  'apps/v1': apps,
  'keda.sh/v1alpha1': keda,
};

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

/** What the validator did with one object node of the document. */
interface Visit {
  path: string;
  keys: string[];
  read: Set<string>;
  /** Its keys were listed: a map (additionalProperties), whose keys are data, not fields. */
  enumerated: boolean;
}

/**
 * Check one object against its kind's schema, then for fields the schema does not declare.
 * @throws Error naming the object and every violation; also for a kind no installed package has a schema for.
 */
export function validateObject(object: K8sObject): void {
  const what = `${object.kind ?? '(no kind)'} ${object.metadata?.name ?? '(no name)'}`;
  const model = MODELS[object.apiVersion]?.[object.kind] as ModelClass | undefined;
  if (!model) {
    throw new Error(`${what}: no schema for apiVersion ${object.apiVersion}, kind ${object.kind} (cannot validate it)`);
  }
  const visits: Visit[] = [];
  try {
    model.prototype.validate.call(track(object, '', visits));
  } catch (err) {
    throw new Error(`${what} does not match its schema: ${(err as Error).message}`);
  }
  const unknown = visits
    .filter((v) => !v.enumerated && v.read.size > 0)
    .flatMap((v) => v.keys.filter((k) => !v.read.has(k)).map((k) => `${v.path}/${k}`));
  if (unknown.length > 0) {
    throw new Error(`${what} has fields its schema does not declare: ${unknown.join(', ')}`);
  }
}

/** A proxy of `value` (and lazily of everything under it) that records each object's property lookups. */
function track(value: unknown, path: string, visits: Visit[]): unknown {
  if (value === null || typeof value !== 'object') return value;
  const visit: Visit = {
    path,
    keys: Array.isArray(value) ? [] : Object.keys(value),
    read: new Set(),
    enumerated: false,
  };
  if (!Array.isArray(value)) visits.push(visit);
  const children = new Map<string, unknown>();
  return new Proxy(value, {
    get(target, key, receiver) {
      const child: unknown = Reflect.get(target, key, receiver);
      if (typeof key !== 'string') return child;
      visit.read.add(key);
      if (!children.has(key)) children.set(key, track(child, `${path}/${key}`, visits));
      return children.get(key);
    },
    has(target, key) {
      if (typeof key === 'string') visit.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      visit.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}
