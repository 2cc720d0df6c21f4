{
  description = "hello: a tiny Rust workspace with pikaci lanes";

  # No inputs: the payloads are built with the host's /bin/sh, so this flake builds
  # without fetching anything. A real project builds them with crane; see docs/lanes.md.
  outputs = { self }:
    let
      system = "x86_64-linux";
      sh = name: env: script: derivation ({
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" script ];
        PATH = "/usr/bin:/bin";
      } // env);

      # Dependencies only: what Cargo.lock pins. Changes only when Cargo.lock does.
      deps = sh "hello-workspace-deps" { lock = ./Cargo.lock; } ''
        set -eu
        mkdir -p $out/share/deps $out/share/pikaci
        cp $lock $out/share/deps/Cargo.lock
        sed -n 's/^name = "\(.*\)"/\1/p' $lock > $out/share/deps/packages.txt
        printf '{"schema_version":1,"kind":"workspace-deps","entrypoints":[],"mounts":[]}\n' \
          > $out/share/pikaci/payload-manifest.json
      '';

      # The build: the greeting compiled in from the crate's source, and the entrypoints.
      build = sh "hello-workspace-build" {
        src = ./crates;
        runTests = ./ci/run-tests.sh;
        report = ./ci/report.sh;
      } ''
        set -eu
        mkdir -p $out/bin $out/share/greet $out/share/pikaci
        sed -n 's/.*format!("\(.*\)", name).*/\1/p' $src/greet/src/lib.rs | sed 's/{}/%s/' \
          > $out/share/greet/format
        test -s $out/share/greet/format
        cp $runTests $out/bin/run-tests
        cp $report $out/bin/report
        chmod +x $out/bin/run-tests $out/bin/report
        printf '{"schema_version":1,"kind":"workspace-build","entrypoints":["bin/run-tests","bin/report"],"mounts":[]}\n' \
          > $out/share/pikaci/payload-manifest.json
      '';

      payloads = { workspace-deps = deps; workspace-build = build; };
    in
    {
      packages.${system} = { workspace-deps = deps; workspace-build = build; };

      pikaci.${system}.lanes = {
        unit = {
          description = "greet's test cases";
          kind = "staged-linux-rust";
          inherit payloads;
          command = [ "/pikaci/payloads/workspace-build/bin/run-tests" ];
          paths = [ "crates/**" "Cargo.toml" "Cargo.lock" ];
          timeout = 120;
          env = { RUST_BACKTRACE = "1"; };
        };
        pending = {
          description = "the cases not implemented yet (fails)";
          kind = "staged-linux-rust";
          inherit payloads;
          command = [ "/pikaci/payloads/workspace-build/bin/run-tests" "crates/greet/tests/pending.txt" ];
          paths = [ "crates/**" ];
          timeout = 120;
        };
        report = {
          description = "a long report, kept as an artifact";
          kind = "staged-linux-rust";
          inherit payloads;
          command = [ "/pikaci/payloads/workspace-build/bin/report" ];
          timeout = 120;
          env = { REPORT_LINES = "3000"; };
        };
      };
    };
}
