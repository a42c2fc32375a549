// Type declarations for heapwarden's Node.js probe (`require('heapwarden-probe')`): the
// public API of heapwarden-probe.js, declared once. Outside heapwarden (no
// HEAPWARDEN_CONTROL_FD) the probe does nothing and this API is inert: `claimed` is
// false and every call is a no-op. probes/node/test/types.test.js checks that this file
// declares exactly what the probe exports.

import { EventEmitter } from 'events';

declare namespace heapwardenProbe {
  /** Anything with prom-client's `Registry.metrics()`: its text is merged into the
   *  agent's /metrics, each series labelled with the worker's slot. */
  interface MetricsRegistry {
    metrics(): string | Promise<string>;
  }

  /** Runs when another worker invalidated `key` at `version`; the agent waits (up to
   *  its deadline) until the returned promise settles before acknowledging. */
  type InvalidateHook = (key: string, version: number) => void | Promise<void>;

  /** What a drain tells the app. */
  interface DrainEvent {
    /** The time the agent grants to finish in-flight work, in milliseconds. */
    deadlineMs: number;
  }

  /** What the probe cost the event loop, for the benchmarks (microseconds). */
  interface Timing {
    maxSampleMicros: number;
    samples: number;
    recentSampleMicros: number[];
    lastDumpBlockMicros: number;
    lastSnapshotMicros: number;
  }

  interface Probe extends EventEmitter {
    /** The probe's version (also sent in its `hello`). */
    readonly version: string;
    /** Whether this process holds the control channel (the worker the agent started;
     *  never its children). */
    readonly claimed: boolean;
    /** The inherited listening socket's descriptor (3) while the app may take it;
     *  null when none was passed. */
    readonly listenFd: number | null;
    /** Tells the agent the app can take traffic, for an app that does not listen on
     *  the pool's port itself. Once; later calls do nothing. */
    ready(): void;
    /** Hands over a metrics registry whose text joins the agent's /metrics. */
    setMetricsRegistry(registry: MetricsRegistry): void;
    /** Registers the hook run when another worker invalidated a key. */
    onInvalidate(hook: InvalidateHook): void;
    readonly timing: Timing;
    /** Internal: the channel's framing, for the probe's own protocol tests. */
    readonly _frames: {
      encode(msg: object): Buffer;
      decode(buf: Buffer): { messages: object[]; rest: Buffer; fatal: string | null };
      flatten(profile: object): object;
      redirectListen(args: unknown[]): unknown[];
    };

    /** A drain began: stop taking work and finish within `deadlineMs`. Without a
     *  listener the probe sends the process SIGTERM once its servers have closed. */
    on(event: 'drain', listener: (event: DrainEvent) => void): this;
    /** Every server listening on the inherited socket has closed. */
    on(event: 'drained', listener: () => void): this;
    once(event: 'drain', listener: (event: DrainEvent) => void): this;
    once(event: 'drained', listener: () => void): this;
  }
}

declare const heapwardenProbe: heapwardenProbe.Probe;
export = heapwardenProbe;
