# Shell functions shared by the CI steps (.ci/steps/*.sh), which source this file:
#   . .ci/lib.sh   (from the repository root, where every step cd's first)
# Not a step itself: .ci/run runs .ci/steps/*.sh only.

# freeze_unchanged BEFORE AFTER WHAT STACK: `pip list --format=freeze` files from before and after
# installing WHAT (e.g. "r3hf[hf]") into STACK (e.g. "veRL's stack"). Succeeds when AFTER is BEFORE
# plus r3hf alone; otherwise prints which packages moved or were added and returns 1.
freeze_unchanged() {
  local before=$1 after=$2 what=$3 stack=$4 moved added
  moved=$(comm -23 <(sort "$before") <(sort "$after"))
  added=$(comm -13 <(sort "$before") <(sort "$after") | cut -d= -f1 | tr '\n' ' ')
  [ -z "$moved" ] || { echo "pip install $what moved packages of $stack:"; echo "$moved"; return 1; }
  [ "$added" = "r3hf " ] || { echo "pip install $what into $stack added: $added (want r3hf)"; return 1; }
}
