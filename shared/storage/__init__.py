"""Where state lives: Redis connections and in-process caches, plain and shared by every subsystem."""
