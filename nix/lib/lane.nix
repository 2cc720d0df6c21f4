# The lane record itself: `pikaci.<system>.lanes.<id>`, checked here so that a mistake is
# reported where it was made rather than when pikaci reads the catalog.
let
  idRule = "`[a-z0-9][a-z0-9-]*`, at most 48 characters";

  isValidId = s: builtins.isString s && builtins.stringLength s <= 48 && builtins.match "[a-z0-9][a-z0-9-]*" s != null;

  requiredPayloads = [
    "workspace-deps"
    "workspace-build"
  ];

  fail = why: throw "pikaci lane: ${why}";

  mkLane =
    {
      description,
      payloads,
      # More payloads from the user, beside those a lane builder made (`payloads`), which
      # they may not replace.
      extraPayloads ? { },
      command,
      paths ? [ ],
      timeout ? 1800,
      env ? { },
      runtime ? null,
      # The lane runs as this many jobs; each gets `PIKACI_SHARD=k/N` in its environment.
      shards ? 1,
      # Retries of a failed test (informational for pikaci; the command applies them).
      retries ? 0,
      # `names: [ words ]`: the arguments that make the command run only the named tests;
      # null when the command cannot filter.
      testFilterArgs ? null,
    }:
    let
      clashing = builtins.filter (n: extraPayloads ? ${n}) (builtins.attrNames payloads);
      allPayloads = extraPayloads // payloads;
      names = builtins.attrNames allPayloads;
      badNames = builtins.filter (n: !isValidId n) names;
      missing = builtins.filter (n: !(allPayloads ? ${n})) requiredPayloads;
      badEnv = builtins.filter (n: !builtins.isString env.${n}) (builtins.attrNames env);
    in
    if clashing != [ ] then
      fail "`extraPayloads` may not redefine `${builtins.head clashing}`; the lane builds it"
    else if !builtins.isString description then
      fail "`description` must be a string"
    else if badNames != [ ] then
      fail "payload name `${builtins.head badNames}` is invalid: payload names are ${idRule}"
    else if missing != [ ] then
      fail "a staged-linux-rust lane needs the payload `${builtins.head missing}`"
    else if !(builtins.isList command) || command == [ ] || !(builtins.all builtins.isString command) then
      fail "`command` must be a non-empty list of strings (an argv, run in the guest)"
    else if !(builtins.isList paths) || !(builtins.all builtins.isString paths) then
      fail "`paths` must be a list of glob strings"
    else if !(builtins.isInt timeout) || timeout <= 0 then
      fail "`timeout` must be a positive number of seconds"
    else if badEnv != [ ] then
      fail "`env.${builtins.head badEnv}` must be a string"
    else if !(builtins.isInt shards) || shards < 1 then
      fail "`shards` must be a whole number >= 1"
    else if !(builtins.isInt retries) || retries < 0 then
      fail "`retries` must be a whole number >= 0"
    else if testFilterArgs != null && !builtins.isFunction testFilterArgs then
      fail "`testFilterArgs` must be a function from a list of test names to a list of arguments"
    else
      {
        kind = "staged-linux-rust";
        payloads = allPayloads;
        inherit
          description
          command
          paths
          timeout
          env
          ;
      }
      // (if runtime == null then { } else { inherit runtime; })
      // (if shards == 1 then { } else { inherit shards; })
      // (if retries == 0 then { } else { inherit retries; })
      // (if testFilterArgs == null then { } else { inherit testFilterArgs; });
in
{
  inherit
    mkLane
    isValidId
    requiredPayloads
    ;
}
