# syntax=docker/dockerfile:1
# futures-sidecar image: build with dev dependencies, ship only the compiled code and production dependencies.
#   docker build -t futures-sidecar .
#   docker run --rm -p 8089:8089 -v futures-sidecar-data:/data \
#     -e LIVEKIT_KEYS='devkey: secret' -e SIDECAR_HOMESERVERS=https://matrix.example futures-sidecar
# Node 22 and 24 both work (engines >= 20.11); pick with --build-arg NODE_MAJOR=24.
ARG NODE_MAJOR=22

# Toolchain for better-sqlite3: its install script falls back to node-gyp when no prebuilt binary matches.
FROM node:${NODE_MAJOR}-bookworm-slim AS toolchain
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./

# Production dependencies only, compiled for the same Node and glibc as the runtime stage.
FROM toolchain AS deps
RUN --mount=type=cache,target=/root/.npm npm ci --omit=dev

# Everything, to compile TypeScript; `npm run build` emits dist/src/main.js.
FROM toolchain AS build
RUN --mount=type=cache,target=/root/.npm npm ci
# .dockerignore lets only package files, tsconfig*.json, src/, client/ and public/ through.
COPY . .
RUN npm run build && mkdir -p public

FROM node:${NODE_MAJOR}-bookworm-slim AS runtime
# tini as PID 1 passes SIGTERM on to node (which then drains, see SIDECAR_SHUTDOWN_TIMEOUT_MS) and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
ENV NODE_ENV=production \
    SIDECAR_STORE=sqlite:/data/futures-sidecar.db
WORKDIR /app
# package.json carries "type": "module", which the compiled ESM files need.
COPY package.json ./
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# Static files read at run time (the operator console: dist/src/http/console.js looks in ../../../public/console).
COPY --from=build /app/public ./public
# The image's `node` user (uid 1000) owns the data directory; numeric so runAsNonRoot can verify it.
RUN mkdir -p /data && chown 1000:1000 /data
VOLUME ["/data"]
USER 1000:1000
EXPOSE 8089
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.SIDECAR_PORT||8089)+'/livez').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["node", "dist/src/main.js"]
