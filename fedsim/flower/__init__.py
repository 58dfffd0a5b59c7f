"""Flower hosting: the fedsim engine inside a Flower `ServerApp`, client jobs inside a `ClientApp`.

Every `import flwr` of the project lives in this package, so that
`import fedsim` works without Flower installed.

- `codec`: Job / JobResult <-> Flower `RecordDict` (arrays in an ArrayRecord, the rest as
  JSON text in a ConfigRecord; no pickle crosses the wire).
- `client_app`: the `ClientApp` (a resident `ClientRuntime` per process).
- `grid`: `GridExecutor`, the executor the engine sees, a thin adapter over a Flower `Grid`.
- `server_app`: `ServerApp` factories (simulation host, deployment entry point).
- `simulation`: the `flower` executor (Flower's simulation engine, Ray backend).
- deployment (`fedsim deploy`, no flwr import): `deploy` (SuperLink/SuperNode processes),
  `serve` (server and client flows), `certs` (test TLS credentials and node keys),
  `local_data` (a client's own .npz), `faults` (testing-only misbehaving clients), `cli`.
"""
