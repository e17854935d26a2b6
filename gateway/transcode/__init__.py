"""JSON <-> protobuf, generic over descriptors.

Rules (both surfaces):
- The JSON key of a field is its `(sendsafe.options.v1.wire_name)` option when set, else the proto
  field name. Nothing else is accepted (no camelCase aliases): unknown keys are errors.
- Responses: integer types -> JSON integers (never strings, whatever their width), double/float ->
  numbers (non-finite -> null), bool -> true/false, string -> string, bytes -> base64, enum -> its
  name, nested message -> object, repeated -> list, map -> object. Fields with explicit presence
  (`optional`, message fields, oneof members) are null when unset; every other scalar is always
  present, default values included.
- `google.protobuf.Timestamp` is an RFC 3339 string on `/v1`, unix seconds (int) on the ClickSend
  `/v3` surface (ClickSend's convention for times); Duration/FieldMask use their proto3 JSON strings,
  wrapper types their wrapped value, Struct/Value/ListValue their natural JSON.
- Requests are strict: the JSON type must match the field type (a string where an int is expected is
  an error naming the field), `null` leaves a field unset, duplicate object keys and NaN/Infinity
  literals are rejected as malformed JSON.
- Integers (body, query and path alike) must fit the field's type and its declared
  `(sendsafe.options.v1.range)`, else 400 PARAMETER_OUT_OF_RANGE naming the field and the bounds
  (a path value out of range is a resource that cannot exist: 404).
- Query and path values are parsed to the field's type; dotted names reach into nested messages;
  repeated fields take repeated query keys.

The per-message work is compiled once per (descriptor, surface) into small plans.

Files: `fields` (what a field accepts and is called: wire names, integer bounds, well-known types,
`TranscodeError`), `response` (message -> JSON), `body` (strict JSON body -> constructor arguments),
`text` (query/path/map-key text -> a field's value), `request` (`build_request`: body + query + path ->
the RPC input message). The surface itself (`/v3` or `/v1`) is `gateway.surface.Surface`.
"""
