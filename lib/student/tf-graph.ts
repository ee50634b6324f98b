/**
 * TensorFlow graphs built node by node and run as one session call through tfjs-node's binding. An eager op costs
 * ~14 µs of dispatch whatever its size (measured on 2 cores: 200 chained AddV2 of [8, 512], 2.9 ms eager against
 * 0.17 ms as one graph), so work made of hundreds of small ops, such as a decoder step, runs several times faster as
 * a graph. tfjs-node has no graph API, but it loads SavedModels: {@link GraphBuilder} writes the GraphDef (a
 * SavedModel holding only a MetaGraphDef tagged `serve`, no variables) with a minimal protobuf writer, and
 * {@link GraphSession} loads it once and runs it with named feeds and fetches. Feeds and fetches are TensorFlow
 * handles as the binding knows them, so weights are fed as they are, without a copy.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// ---------------------------------------------------------------------------------------------------------------
// Protobuf encoding (the wire format: varints and length-delimited fields), enough for GraphDef

class ProtoWriter {
  readonly bytes: number[] = [];

  varint(value: number | bigint): this {
    // Negative int32/int64 values are written as their 64-bit two's complement (ten bytes), as protobuf does.
    let v = BigInt.asUintN(64, BigInt(value));
    while (v > 127n) {
      this.bytes.push(Number(v & 127n) | 128);
      v >>= 7n;
    }
    this.bytes.push(Number(v));
    return this;
  }

  int(field: number, value: number | bigint): this {
    return this.varint(field * 8).varint(value);
  }

  raw(field: number, bytes: ArrayLike<number>): this {
    this.varint(field * 8 + 2).varint(bytes.length);
    for (let i = 0; i < bytes.length; i++) this.bytes.push(bytes[i]);
    return this;
  }

  string(field: number, value: string): this {
    return this.raw(field, Buffer.from(value, 'utf8'));
  }

  message(field: number, message: ProtoWriter): this {
    return this.raw(field, message.bytes);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Graphs

export type DType = 'float32' | 'int32' | 'uint32' | 'uint16' | 'bool';

/** tensorflow/core/framework/types.proto */
const DATA_TYPE: Record<DType, number> = { float32: 1, int32: 3, uint16: 17, uint32: 22, bool: 10 };

/** An attribute value (tensorflow/core/framework/attr_value.proto). */
export type Attr = { type: DType } | { bool: boolean } | { int: number };

function attrValue(attr: Attr): ProtoWriter {
  const w = new ProtoWriter();
  if ('type' in attr) return w.int(6, DATA_TYPE[attr.type]);
  if ('bool' in attr) return w.int(5, attr.bool ? 1 : 0);
  return w.int(3, attr.int);
}

/** A node's attribute whose value is not an {@link Attr}: a placeholder's shape, or a constant's tensor. */
type RawAttr =
  | { key: 'shape'; unknownRank: true }
  | { key: 'value'; dtype: 'float32' | 'int32' | 'uint16'; values: readonly number[]; shape: readonly number[] };

/** One node as added: everything its NodeDef is written from. */
interface NodeRecord {
  name: string;
  op: string;
  inputs: readonly string[];
  attrs: Record<string, Attr>;
  raw?: RawAttr;
}

function rawAttrValue(raw: RawAttr): ProtoWriter {
  // shape: TensorShapeProto with unknown_rank.
  if (raw.key === 'shape') return new ProtoWriter().message(7, new ProtoWriter().int(3, 1));
  const tensorShape = new ProtoWriter();
  for (const size of raw.shape) tensorShape.message(2, new ProtoWriter().int(1, size));
  const tensor = new ProtoWriter().int(1, DATA_TYPE[raw.dtype]).message(2, tensorShape);
  if (raw.dtype === 'float32') {
    tensor.raw(5, new Uint8Array(Float32Array.from(raw.values).buffer)); // float_val, packed
  } else {
    const packed = new ProtoWriter();
    for (const v of raw.values) packed.varint(v);
    tensor.raw(7, packed.bytes); // int_val, packed: TensorProto's field for int32 and uint16 alike
  }
  return new ProtoWriter().message(8, tensor);
}

/** A NodeDef (tensorflow/core/framework/node_def.proto). */
function nodeDef(n: NodeRecord): ProtoWriter {
  const node = new ProtoWriter().string(1, n.name).string(2, n.op);
  for (const input of n.inputs) node.string(3, input);
  const entries: [string, ProtoWriter][] = Object.entries(n.attrs).map(([key, value]) => [key, attrValue(value)]);
  if (n.raw) entries.push([n.raw.key, rawAttrValue(n.raw)]);
  for (const [key, value] of entries) node.message(5, new ProtoWriter().string(1, key).message(2, value));
  return node;
}

/**
 * A GraphDef under construction. Each method adds a node and returns its name, which later nodes take as an input
 * (`name:i` for an op's i-th output). Placeholders have unknown shapes: the same graph serves every batch size and
 * cache length.
 *
 * Nodes are kept as plain records and written as protobuf only when a graph is loaded for the first time: the training
 * step rebuilds each sublayer's graph at every call (graph-frame.ts) and finds the loaded one by {@link digest}. Writing
 * every node's protobuf as it was added took ~18 ms of a ~525 ms `small` step (a profile of the thread that dispatches
 * every kernel, so the kernels' threads waited meanwhile); with records, alternated runs on 2 cores gave 504-533 ms a
 * step against 536-538 for `small` and 376-384 against 391-400 for the d256 recipe's student.
 */
export class GraphBuilder {
  private readonly nodes: NodeRecord[] = [];
  private readonly names = new Set<string>();
  private counter = 0;

  /** A value fed at every run. */
  placeholder(name: string, dtype: DType): string {
    return this.node({ name, op: 'Placeholder', inputs: [], attrs: { dtype: { type: dtype } }, raw: SHAPELESS });
  }

  /** A constant: float or integer values of the given shape ([] for a scalar). */
  constant(dtype: 'float32' | 'int32' | 'uint16', values: readonly number[], shape: readonly number[] = []): string {
    return this.node({
      name: this.generatedName('Const'),
      op: 'Const',
      inputs: [],
      attrs: { dtype: { type: dtype } },
      raw: { key: 'value', dtype, values: [...values], shape: [...shape] },
    });
  }

  /** An op node; `name` is generated unless given (give one to every node that is fetched). */
  op(op: string, inputs: readonly string[], attrs: Record<string, Attr> = {}, name?: string): string {
    return this.node({ name: name ?? this.generatedName(op), op, inputs: [...inputs], attrs: { ...attrs } });
  }

  /**
   * A digest of the nodes, which alone make a graph: what {@link GraphSession.load} finds a loaded graph by. The JSON
   * of the node records says everything the GraphDef is written from, and the records are copies (a caller changing
   * its arrays later changes nothing), so two builders share a digest only when they write the same graph.
   */
  digest(): string {
    return createHash('sha256').update(JSON.stringify(this.nodes, exactNumbers)).digest('hex');
  }

  /** The SavedModel file (`saved_model.pb`) holding this graph. */
  toSavedModel(): Uint8Array {
    const graph = new ProtoWriter();
    for (const n of this.nodes) graph.message(1, nodeDef(n));
    // GraphDef.versions.producer: a TF 2.x graph (TF 2.9 reads producers from 0 up).
    graph.message(4, new ProtoWriter().int(1, 808));
    const meta = new ProtoWriter().message(1, new ProtoWriter().string(4, 'serve')).message(2, graph);
    return Uint8Array.from(new ProtoWriter().int(1, 1).message(2, meta).bytes);
  }

  private generatedName(op: string): string {
    return `${op.toLowerCase()}_${this.counter++}`;
  }

  private node(record: NodeRecord): string {
    if (this.names.has(record.name)) throw new Error(`GraphBuilder: node name '${record.name}' is taken`);
    this.names.add(record.name);
    this.nodes.push(record);
    return record.name;
  }
}

const SHAPELESS: RawAttr = { key: 'shape', unknownRank: true };

/**
 * JSON writes NaN and ±Infinity as `null` and −0 as `0`, so two constants that differ only there would share a
 * digest: such numbers are written as strings instead (no string stands where a number does in a record).
 */
function exactNumbers(_key: string, value: unknown): unknown {
  if (typeof value !== 'number' || (Number.isFinite(value) && !Object.is(value, -0))) return value;
  return Object.is(value, -0) ? '-0' : String(value);
}

// ---------------------------------------------------------------------------------------------------------------
// Sessions

/** The parts of tfjs-node's binding (dist/tfjs_binding.d.ts) a session needs. */
export interface SessionBinding {
  loadSavedModel(exportDir: string, tags: string): number;
  runSavedModel(
    id: number,
    inputs: number[],
    inputNames: string,
    outputNames: string
  ): { id: number; shape: number[]; dtype: number }[];
}

/** Loaded sessions by the hash of their graph: a graph holds no weights, so one session serves every model. */
const sessions = new Map<string, number>();

/** A loaded graph. Sessions live as long as the process (a few per model shape, each a few hundred KB). */
export class GraphSession {
  private constructor(
    private readonly binding: SessionBinding,
    private readonly id: number
  ) {}

  /** Loads a graph, or finds the session of the same graph loaded before. */
  static load(binding: SessionBinding, graph: GraphBuilder): GraphSession {
    const key = graph.digest();
    let id = sessions.get(key);
    if (id === undefined) {
      const dir = mkdtempSync(join(tmpdir(), 'stepwise-graph-'));
      try {
        writeFileSync(join(dir, 'saved_model.pb'), graph.toSavedModel());
        id = binding.loadSavedModel(dir, 'serve');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      sessions.set(key, id);
    }
    return new GraphSession(binding, id);
  }

  /**
   * Runs the graph: `feeds` maps placeholder names to TensorFlow handles (still the caller's); the fetched outputs
   * come back as new handles, the caller's to delete, in the order of `fetches`.
   */
  run(feeds: ReadonlyMap<string, number>, fetches: readonly string[]): { id: number; shape: number[] }[] {
    return this.binding.runSavedModel(this.id, [...feeds.values()], [...feeds.keys()].join(','), fetches.join(','));
  }
}
