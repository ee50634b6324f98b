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

/**
 * A GraphDef under construction. Each method adds a node and returns its name, which later nodes take as an input
 * (`name:i` for an op's i-th output). Placeholders have unknown shapes: the same graph serves every batch size and
 * cache length.
 */
export class GraphBuilder {
  private readonly graph = new ProtoWriter();
  private readonly names = new Set<string>();
  private counter = 0;

  /** A value fed at every run. */
  placeholder(name: string, dtype: DType): string {
    // shape: TensorShapeProto with unknown_rank.
    const shape = new ProtoWriter().message(7, new ProtoWriter().int(3, 1));
    return this.node('Placeholder', [], { dtype: { type: dtype } }, name, [['shape', shape]]);
  }

  /** A constant: float or integer values of the given shape ([] for a scalar). */
  constant(dtype: 'float32' | 'int32' | 'uint16', values: readonly number[], shape: readonly number[] = []): string {
    const tensorShape = new ProtoWriter();
    for (const size of shape) tensorShape.message(2, new ProtoWriter().int(1, size));
    const tensor = new ProtoWriter().int(1, DATA_TYPE[dtype]).message(2, tensorShape);
    if (dtype === 'float32') {
      tensor.raw(5, new Uint8Array(Float32Array.from(values).buffer)); // float_val, packed
    } else {
      const packed = new ProtoWriter();
      for (const v of values) packed.varint(v);
      tensor.raw(7, packed.bytes); // int_val, packed: TensorProto's field for int32 and uint16 alike
    }
    return this.node('Const', [], { dtype: { type: dtype } }, undefined, [
      ['value', new ProtoWriter().message(8, tensor)],
    ]);
  }

  /** An op node; `name` is generated unless given (give one to every node that is fetched). */
  op(op: string, inputs: readonly string[], attrs: Record<string, Attr> = {}, name?: string): string {
    return this.node(op, inputs, attrs, name);
  }

  /**
   * A digest of the nodes, which alone make a graph: what {@link GraphSession.load} finds a loaded graph by. The
   * training step looks its sublayers' graphs up ~80 times a step; for the `small` shape, hashing the nodes as they
   * are took 8–10 ms a step, where serialising the whole SavedModel and hashing that took ~30 ms.
   */
  digest(): string {
    return createHash('sha256').update(Uint8Array.from(this.graph.bytes)).digest('hex');
  }

  /** The SavedModel file (`saved_model.pb`) holding this graph. */
  toSavedModel(): Uint8Array {
    // GraphDef.versions.producer: a TF 2.x graph (TF 2.9 reads producers from 0 up).
    const graph = new ProtoWriter();
    for (const byte of this.graph.bytes) graph.bytes.push(byte);
    graph.message(4, new ProtoWriter().int(1, 808));
    const meta = new ProtoWriter().message(1, new ProtoWriter().string(4, 'serve')).message(2, graph);
    return Uint8Array.from(new ProtoWriter().int(1, 1).message(2, meta).bytes);
  }

  private node(
    op: string,
    inputs: readonly string[],
    attrs: Record<string, Attr>,
    name: string | undefined,
    raw: [string, ProtoWriter][] = []
  ): string {
    const nodeName = name ?? `${op.toLowerCase()}_${this.counter++}`;
    if (this.names.has(nodeName)) throw new Error(`GraphBuilder: node name '${nodeName}' is taken`);
    this.names.add(nodeName);
    const node = new ProtoWriter().string(1, nodeName).string(2, op);
    for (const input of inputs) node.string(3, input);
    const entries: [string, ProtoWriter][] = [
      ...Object.entries(attrs).map(([key, value]): [string, ProtoWriter] => [key, attrValue(value)]),
      ...raw,
    ];
    for (const [key, value] of entries) node.message(5, new ProtoWriter().string(1, key).message(2, value));
    this.graph.message(1, node);
    return nodeName;
  }
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
