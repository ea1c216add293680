"""Model files Swell writes itself: tiny random models in real layouts for tests and CPU demos."""
