"""Everything the messaging service talks to outside itself: PostgreSQL (store/), the Redis dispatch stream
(stream) and limiter (limits), carriers (carriers), and the keys, audit and identity services (one client
module each)."""
