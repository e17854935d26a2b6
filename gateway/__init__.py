"""SendSafe's HTTPS gateway: TLS termination, authentication, JSON <-> gRPC, trace start, audit.

Files, in the order a request meets them:
- `__main__` (`python -m gateway`: the TLS 1.3 policy check) -> `app` (composition root: `build`, start/stop),
  `config` (settings), `tls` (the public listener's TLS policy and certificate reload);
- `edge` (the one middleware: request id, trace, error bodies, security headers), `request_state` (what is
  learnt about a request while serving it), `evidence` (its one audit event), `unauth` (limits and summaries
  of unauthenticated failures);
- `routes` (the route table from the protos' `google.api.http` bindings), `dispatch` (one generic handler per
  route: authentication, permission, step-up, transcoding, the gRPC call), `streaming` (a download route's
  HttpBody messages written out as they come);
- `auth` (credentials -> `Identity`, cached), `principal` (where a request came from; the principal the
  services receive);
- `transcode/` (JSON <-> protobuf; `surface`: `/v3` or `/v1`), `errors` (the one error table and its
  rendering), `compat_clicksend` (ClickSend's `/v3` envelope and response codes).
"""
