# Thin wrapper over CMake so a fresh Debian machine needs one command.
#   make test    install missing packages (as root), build, run every test suite
#   make demo    build and run the demo: control plane + agent + demo game server
#                (DEMO_FLAGS="--exit" stops when the jobs are done; see examples/demo/demo.py)
#   make bench   run the benchmarks and rewrite docs/performance.md
#   make torture long crash-consistency run (200+ kills per job)
# SANITIZE=1 builds with ASan+UBSan into build-asan/.

SANITIZE ?= 0
ifeq ($(SANITIZE),1)
BUILD ?= build-asan
CMAKE_FLAGS += -DJV_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
else
BUILD ?= build
endif
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
# Tests mostly wait (servers, timeouts, child processes): one more than the
# cores keeps the machine busy; `make test TEST_JOBS=1` to run them one by one.
TEST_JOBS ?= $(shell echo $$(( $(JOBS) + 1 )))
CTEST_FLAGS ?=
DEMO_FLAGS ?=

DEB_PACKAGES = build-essential cmake pkg-config python3 zstd xz-utils gzip tar zip curl \
	libcurl4-openssl-dev libcjson-dev liblua5.4-dev lua5.4 libarchive-dev \
	libcriterion-dev libcivetweb-dev libhttp-parser-dev libsqlite3-dev libssl-dev openssl ca-certificates chromium \
	groff-base strace prometheus default-jdk-headless tzdata libexpat1-dev nodejs npm rclone \
	libpq-dev postgresql libmbedtls-dev libwebsockets-dev

.PHONY: all deps configure build test test-unit test-e2e demo bench torture install clean

all: build

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  case $$p in npm) command -v npm >/dev/null 2>&1 && continue;; esac; \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing packages:$$missing"; \
	    echo "run as root: apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi
	@# the test-only S3 server (s3rver), pinned by tests/package-lock.json
	@if [ ! -f tests/node_modules/.package-lock.json ] || \
	    [ tests/package-lock.json -nt tests/node_modules/.package-lock.json ]; then \
	  cd tests && npm ci --no-audit --no-fund --loglevel=error; \
	fi

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

configure: deps $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(TEST_JOBS) $(CTEST_FLAGS)

test-unit: build
	cd $(BUILD) && ctest --output-on-failure -j $(TEST_JOBS) -L unit

test-e2e: build
	cd $(BUILD) && ctest --output-on-failure -j $(TEST_JOBS) -L e2e

demo: build
	python3 examples/demo/demo.py --build-dir $(BUILD) $(DEMO_FLAGS)

bench: build
	./tests/bench/run-all.sh $(BUILD)

torture: build
	cd $(BUILD) && rm -f fault-summary.txt && { JV_TORTURE_KILLS=200 ctest --output-on-failure -L fault; \
	  rc=$$?; cat fault-summary.txt; exit $$rc; }

install: build
	cmake --install $(BUILD)

clean:
	rm -rf build build-asan
