#!/bin/sh
# inline-page.sh TEMPLATE DIST -- prints TEMPLATE with each line "/*@INLINE path@*/" replaced by the file
# DIST/../path (a path under node_modules), so the page needs nothing at run time. Fails on a missing file
# or one that would end its <script>/<style> element early.
set -eu
tpl=$1
mods=$(cd "$2/../.." && pwd)
while IFS= read -r line || [ -n "$line" ]; do
    case $line in
    *'/*@INLINE '*'@*/'*)
        f=${line#*/\*@INLINE }
        f=$mods/${f%@\*/*}
        [ -r "$f" ] || { echo "inline-page: missing $f (npm ci in build/web failed?)" >&2; exit 1; }
        if grep -qi '</script\|</style' "$f"; then
            echo "inline-page: $f contains a closing script/style tag; cannot inline it" >&2
            exit 1
        fi
        cat "$f"
        echo
        ;;
    *) printf '%s\n' "$line" ;;
    esac
done < "$tpl"
