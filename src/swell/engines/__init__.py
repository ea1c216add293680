"""Engines: a light spec per engine (`spec`: options, input, units; no torch), the registry that names
them by import string, result stores (`results`), and the heavy adapters the specs build lazily."""
