/* flame_page.S -- the flame graph page (build/flame.html: web/flame.html.in with d3-flame-graph inlined) in memprof's rodata. */
    .section .rodata
    .global flame_page
    .type flame_page, @object
flame_page:
    .incbin FLAME_HTML
    .byte 0
    .size flame_page, . - flame_page
    .section .note.GNU-stack, "", @progbits
