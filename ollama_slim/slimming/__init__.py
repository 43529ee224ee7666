"""Making the compact model: layer importance, selection, building with bridges, healing."""
